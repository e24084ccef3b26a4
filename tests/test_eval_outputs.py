"""What an evaluation leaves behind for a person: the per-pair CSV, the plots people look for, the curves
behind them (checked against the point metrics), and where ``calibrate --write`` puts a card.

Real models on small celeb24 subsets; plots are checked to exist and be images here (they were
looked at by eye on the whole celeb24 set, see docs/eval.md).
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facematch.cli import app
from facematch.eval import metrics as M
from facematch.eval.plots import merge_thresholds

runner = CliRunner()
QUIET = ["--no-progress", "--no-cache"]


@pytest.fixture(scope="module")
def small_set(celeb24_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 identities x 6 crops (symlinks), 3 F and 3 M."""
    root = tmp_path_factory.mktemp("outputs-set")
    for ident in sorted(p for p in celeb24_dir.iterdir() if p.is_dir())[:6]:
        (root / ident.name).mkdir()
        for crop in sorted(ident.glob("*.png"))[:6]:
            (root / ident.name / crop.name).symlink_to(crop)
    (root / "identities.csv").write_text(
        "identity,gender\n" + "".join(f"{p.name},{'FM'[k % 2]}\n" for k, p in enumerate(sorted(root.iterdir())))
    )
    return root


# ---- curves: oracle checks against the point metrics ------------------------------------------------
def test_cmc_curve_is_cmc_at_every_rank() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.standard_normal((200, 12)), 1)  # coarse values: many ties
    truth = rng.integers(0, 12, 200)
    curve = M.cmc_curve(scores, truth)
    assert len(curve) == 12 and curve[-1] == 1.0 and all(b >= a for a, b in itertools.pairwise(curve))
    assert curve == [M.cmc(scores, truth, [k])[k] for k in range(1, 13)]
    assert M.cmc_curve(scores, truth, max_rank=5) == curve[:5]


def test_dir_fpir_curve_agrees_with_dir_at_fpir_at_its_thresholds() -> None:
    rng = np.random.default_rng(4)
    ms = rng.normal(0.6, 0.15, 400)
    mc = rng.random(400) < 0.95
    ns = np.round(rng.normal(0.2, 0.1, 1500), 3)  # ties among non-mated scores
    curve = M.dir_fpir_curve(ms, mc, ns, max_points=10_000)
    assert curve.fpir == sorted(curve.fpir, reverse=True) and len(curve.threshold) == np.unique(ns).size
    for t, fpir, dirate in zip(curve.threshold, curve.fpir, curve.dir, strict=True):
        assert fpir == np.mean(ns >= t) and dirate == np.mean(mc & (ms >= t))  # brute force at each threshold
    thin = M.dir_fpir_curve(ms, mc, ns, max_points=50)
    assert len(thin.fpir) <= 52 and set(thin.threshold) <= set(curve.threshold)
    assert thin.fpir[0] == curve.fpir[0] and thin.fpir[-1] == curve.fpir[-1]  # both ends kept


def test_equal_thresholds_are_drawn_once_with_both_labels() -> None:
    merged = merge_thresholds({"FMR 1e-3": 0.261, "FMR 1e-2": 0.19, "shared (fairness)": 0.261})
    assert merged == [("FMR 1e-2", 0.19), ("FMR 1e-3 = shared (fairness)", 0.261)]


# ---- reports -----------------------------------------------------------------------------------
def test_eval_aligned_draws_det_cmc_dir_and_fairness(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    meta = ["--meta", str(small_set / "identities.csv"), "--target-fmr", "0.01"]
    r = runner.invoke(app, ["eval", "aligned", str(small_set), *meta, "--out", str(out), *QUIET])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    files = report["files"]
    assert set(files) == {"roc", "det", "histogram", "cmc", "dir_fpir", "fairness", "erc"}
    md = (out / "report.md").read_text()
    for name in files.values():
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] >= 600
        assert f"({name})" in md, name
    cs = report["identification"]["closed_set"]
    assert len(cs["cmc"]) == cs["n_gallery_identities"] == 6
    assert cs["cmc"][0] == cs["rank"]["1"] and cs["cmc"][4] == cs["rank"]["5"]
    o = report["identification"]["open_set"]
    assert o["curve"]["n_nonmated"] == o["n_nonmated"] and o["curve"]["n_mated"] == o["n_mated"]
    # the summary rounds: percentages with 2 decimals, no raw floats
    assert not any(len(m) > 8 for m in __import__("re").findall(r"\d+\.\d+", r.stdout)), r.stdout
    assert "TAR " in r.stdout and "% @ FMR 1e-2" in r.stdout and "fairness by gender at threshold" in r.stdout


def test_eval_pairs_writes_every_pair_with_its_decisions(small_set: Path, tmp_path: Path) -> None:
    crops = sorted(small_set.glob("*/*.png"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    rows = [(a, b, a.parent == b.parent) for i, a in enumerate(crops) for b in crops[i + 1 :: 4]]
    rows += [(crops[0], text, False), (text, crops[1], True)]
    pairs = tmp_path / "pairs.csv"

    def rel(img: Path) -> str:  # names relative to --root where they can be, as pair lists do
        return str(img.relative_to(small_set)) if img.is_relative_to(small_set) else str(img)

    pairs.write_text("a,b,same\n" + "".join(f"{rel(a)},{rel(b)},{int(s)}\n" for a, b, s in rows))
    out = tmp_path / "r"
    r = runner.invoke(
        app, ["eval", "pairs", str(pairs), "--root", str(small_set), "--aligned", "--out", str(out), *QUIET]
    )
    assert r.exit_code == 0, r.output
    assert f"every pair with its decisions: {out / 'pairs.csv'}" in r.stdout
    report = json.loads((out / "report.json").read_text())
    assert {"pairs_csv", "roc", "det", "histogram"} <= set(report["files"])
    with (out / "pairs.csv").open(newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows)
    res = report["result"]
    thresholds = {
        f"match_fmr_{k}": p["threshold"]
        for p, k in zip(res["operating_points"], ("1e-2", "1e-3", "1e-4"), strict=True)
        if p["resolvable"]
    }
    thresholds |= {f"match_card_fmr_{c['card_fmr']}": c["threshold"] for c in res["card_points"]}
    assert list(got[0]) == ["image_a", "image_b", "same", "similarity", *thresholds, "failure"]
    assert got[0]["image_a"] == str(rows[0][0].relative_to(small_set))  # named as in the pair list
    scored = [g for g in got if g["similarity"]]
    assert len(scored) == len(rows) - 2
    for g in scored:
        s = float(g["similarity"])
        for col, t in thresholds.items():
            assert g[col] == str(int(s >= t)), (g, col, t)  # the SDK's rule, on the exact similarity
    failed = [g for g in got if not g["similarity"]]
    assert [g["failure"] for g in failed] == ["b: invalid_image", "a: invalid_image"]
    assert all(g[c] == "" for g in failed for c in thresholds)
    assert sum(int(g["same"]) for g in got) == sum(s for _, _, s in rows)


# ---- calibrate --write ----------------------------------------------------------------------------
@pytest.fixture()
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACEMATCH_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("FACEMATCH_MODEL_DIR", raising=False)
    return tmp_path / "config" / "models"


def test_calibrate_write_keeps_the_installed_card_and_is_found_first(small_set: Path, user_dirs: Path) -> None:
    from facematch.model_files import load_card, packaged_cards_dir

    packaged = packaged_cards_dir() / "w600k_mbf.json"
    before = packaged.read_bytes()
    args = ["calibrate", str(small_set), "--fmr", "0.01", "--default-fmr", "0.01", *QUIET]
    dry = runner.invoke(app, args)
    assert dry.exit_code == 0 and f"pass --write to store it in {user_dirs / 'w600k_mbf.json'}" in dry.output
    r = runner.invoke(app, [*args, "--write", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["written_to"] == str(user_dirs / "w600k_mbf.json")
    assert packaged.read_bytes() == before  # the installed checkout is left alone
    card = load_card("w600k_mbf")  # lookup by id finds the user's card first ...
    assert card.card_path == (user_dirs / "w600k_mbf.json").resolve()
    assert card.calibration is not None and card.calibration.set == small_set.name
    from facematch import FaceMatcher

    assert FaceMatcher().threshold_for(0.01) == card.calibration.thresholds["1e-2"]  # ... and the SDK uses it
    again = runner.invoke(app, [*args, "--write"])  # a card already in the user's folder is updated there
    assert again.exit_code == 0 and str(user_dirs / "w600k_mbf.json") in again.output


def test_calibrate_write_needs_in_place_for_a_card_named_by_path(
    small_set: Path, user_dirs: Path, tmp_path: Path
) -> None:
    from facematch.model_files import packaged_cards_dir

    mine = tmp_path / "mine.json"
    mine.write_bytes((packaged_cards_dir() / "w600k_mbf.json").read_bytes())
    args = ["calibrate", str(small_set), "--model", str(mine), "--fmr", "0.01", "--default-fmr", "0.01", *QUIET]
    refused = runner.invoke(app, [*args, "--write"])
    assert refused.exit_code == 2 and "pass --in-place to update it there, or --out PATH" in refused.output
    assert not user_dirs.exists()
    r = runner.invoke(app, [*args, "--write", "--in-place"])
    assert r.exit_code == 0, r.output
    assert json.loads(mine.read_text())["calibration"]["set"] == small_set.name
    bad = runner.invoke(app, [*args, "--in-place"])
    assert bad.exit_code == 2 and "--in-place goes with --write" in bad.output
