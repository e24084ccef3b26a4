"""Evaluation composes the SDK's own steps (prepare → embed_crops, compare), and the eval CLI's flags.

Oracle tests: what ``facematch eval`` measures for an image or a pair is what
``FaceMatcher.embed`` / ``FaceMatcher.verify`` give for it. Small real sets (package
photos, a few celeb24 crops), so this file is quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from facematch.eval import protocols as P
from facematch.eval.cli import calibrate, eval_app
from facematch.eval.embed import embed_files
from facematch.eval.runner import pair_similarities

app = typer.Typer()
app.add_typer(eval_app, name="eval")
app.command("calibrate")(calibrate)
runner = CliRunner()


@pytest.fixture(scope="module")
def small_set(celeb24_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 identities x 5 celeb24 crops (symlinks): 40 genuine and 150 impostor pairs; 2 F and 2 M identities."""
    root = tmp_path_factory.mktemp("small-set")
    for ident in sorted(p for p in celeb24_dir.iterdir() if p.is_dir())[:4]:
        (root / ident.name).mkdir()
        for crop in sorted(ident.glob("*.png"))[:5]:
            (root / ident.name / crop.name).symlink_to(crop)
    (root / "identities.csv").write_text(
        "identity,gender\n" + "".join(f"{p.name},{'FM'[k % 2]}\n" for k, p in enumerate(sorted(root.iterdir())))
    )
    return root


@pytest.fixture(scope="module")
def small_pairs(small_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    crops = sorted(small_set.glob("*/*.png"))
    rows = [(a, b, a.parent == b.parent) for i, a in enumerate(crops) for b in crops[i + 1 :: 3]]
    f = tmp_path_factory.mktemp("small-pairs") / "pairs.csv"
    f.write_text("a,b,same\n" + "".join(f"{a},{b},{int(s)}\n" for a, b, s in rows))
    return f


def _blank(path: Path) -> Path:
    cv2.imwrite(str(path), np.full((200, 200, 3), 127, np.uint8))
    return path


def test_detect_mode_embeds_what_matcher_embed_gives(matcher, package_images, tmp_path: Path) -> None:
    photos = [package_images[n] for n in ("yaoming.jpg", "gdp.jpg", "players.jpg")]  # players: largest of many
    paths = [*photos, _blank(tmp_path / "blank.png"), tmp_path / "missing.jpg"]
    emb = embed_files(matcher, paths, detect=True, cache=None, progress=False)
    assert emb.ok.tolist() == [True, True, True, False, False]
    assert [(Path(f.path).name, f.status) for f in emb.failures] == [
        ("blank.png", "no_face"),
        ("missing.jpg", "unreadable"),
    ]
    for k, photo in enumerate(photos):
        (fe,) = matcher.embed(photo, faces="largest")
        # same face, same crop, same model: equal up to the batch's float rounding
        np.testing.assert_allclose(emb.vectors[k], fe.vector, atol=1e-5)
        assert emb.norms[k] == pytest.approx(fe.norm, rel=1e-5)
    assert not emb.vectors[3:].any() and np.isnan(emb.norms[3:]).all()


def test_aligned_mode_embeds_what_matcher_embed_aligned_gives(matcher, small_set: Path, package_images) -> None:
    crops = sorted(small_set.glob("*/*.png"))[:6]
    photo = package_images["players.jpg"]  # 1237x800: not an aligned crop, and never squashed into one
    emb = embed_files(matcher, [*crops, photo], detect=False, cache=None, progress=False)
    assert emb.ok.tolist() == [True] * 6 + [False]
    assert [f.status for f in emb.failures] == ["not_aligned"]
    for k, crop in enumerate(crops):
        (fe,) = matcher.embed(crop, aligned=True)
        np.testing.assert_allclose(emb.vectors[k], fe.vector, atol=1e-5)
    assert emb.vectors[:6] == pytest.approx(matcher.embed_crops(np.stack([cv2.imread(str(c)) for c in crops]))[0])


def test_pair_scores_are_matcher_verify_similarities(matcher, package_images, tmp_path: Path) -> None:
    yao = package_images["yaoming.jpg"]
    small = tmp_path / "yao_small.jpg"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(yao)), None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA))
    pairs = [(yao, small), (yao, package_images["gdp.jpg"]), (small, package_images["players.jpg"])]
    paths = [*dict.fromkeys(p for pair in pairs for p in pair), _blank(tmp_path / "blank.png")]
    emb = embed_files(matcher, paths, detect=True, cache=None, progress=False)
    ia = np.array([paths.index(a) for a, _ in pairs] + [0])
    ib = np.array([paths.index(b) for _, b in pairs] + [len(paths) - 1])
    valid = emb.ok[ia] & emb.ok[ib]
    assert valid.tolist() == [True, True, True, False]
    got = pair_similarities(matcher, emb.vectors[ia], emb.vectors[ib], valid)
    for k, (a, b) in enumerate(pairs):
        assert got[k] == pytest.approx(matcher.verify(a, b, threshold=0.3).similarity, abs=1e-5)
    assert got[0] > 0.5 > got[1]  # the same person rescaled vs another person
    assert got[3] == P.FAILED_SCORE


# ---- CLI ---------------------------------------------------------------------------------------


def _json(res: Result) -> dict[str, Any]:
    assert res.exit_code == 0, res.output
    data: dict[str, Any] = json.loads(res.stdout)
    return data


AL = ["--no-cache", "--no-plots", "--no-progress", "--json"]


def test_aligned_and_detect_are_one_flag_in_every_command(small_set: Path, small_pairs: Path, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "r")]
    # eval aligned: aligned crops by default
    assert _json(runner.invoke(app, ["eval", "aligned", str(small_set), *out, *AL]))["dataset"]["detect"] is False
    assert (
        _json(runner.invoke(app, ["eval", "aligned", str(small_set), "--aligned", *out, *AL]))["dataset"]["detect"]
        is False
    )
    det = _json(runner.invoke(app, ["eval", "aligned", str(small_set), "--detect", *out, *AL]))
    assert det["dataset"]["detect"] is True and det["dataset"]["n_embedded"] == 20  # the crops' faces are found
    # eval pairs: detection by default, --aligned for crops
    assert _json(runner.invoke(app, ["eval", "pairs", str(small_pairs), *out, *AL]))["detect"] is True
    assert _json(runner.invoke(app, ["eval", "pairs", str(small_pairs), "--detect", *out, *AL]))["detect"] is True
    al = _json(runner.invoke(app, ["eval", "pairs", str(small_pairs), "--aligned", *out, *AL]))
    assert al["detect"] is False and al["failures"] == []
    # calibrate takes the same flag and records it in the command it stores
    cmd = ["calibrate", str(small_set), "--fmr", "0.1", "--default-fmr", "0.1", "--no-cache", "--no-progress"]
    cal = _json(runner.invoke(app, [*cmd, "--detect", "--json"]))
    assert cal["calibration"]["command"].endswith("--detect --write") and cal["written_to"] is None
    assert "--detect" not in _json(runner.invoke(app, [*cmd, "--json"]))["calibration"]["command"]


def test_fmr_options_and_their_deprecated_far_spellings(small_set: Path, small_pairs: Path, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "r")]
    new = runner.invoke(app, ["eval", "pairs", str(small_pairs), "--aligned", "--fmr", "0.05", *out, *AL])
    assert [p["target_fmr"] for p in _json(new)["result"]["operating_points"]] == [0.05]
    assert new.stderr == ""
    old = runner.invoke(app, ["eval", "pairs", str(small_pairs), "--aligned", "--far", "0.05", *out, *AL])
    assert _json(old)["result"] == _json(new)["result"]
    assert old.stderr == "warning: --far is deprecated; use --fmr (FMR, the false-match rate)\n"
    both = runner.invoke(app, ["eval", "pairs", str(small_pairs), "--fmr", "0.05", "--far", "0.1", *out, *AL])
    assert both.exit_code == 2 and "give --fmr or its deprecated alias --far, not both" in both.stderr
    bad = runner.invoke(app, ["eval", "pairs", str(small_pairs), "--fmr", "1.5", *out, *AL])
    assert bad.exit_code == 2 and "--fmr must be a rate in (0, 1)" in bad.stderr

    meta = ["--meta", str(small_set / "identities.csv")]
    a_new = _json(runner.invoke(app, ["eval", "aligned", str(small_set), *meta, "--target-fmr", "0.1", *out, *AL]))
    a_old = runner.invoke(app, ["eval", "aligned", str(small_set), *meta, "--target-far", "0.1", *out, *AL])
    assert _json(a_old)["fairness"] == a_new["fairness"] and a_new["fairness"]["result"]["target_fmr"] == 0.1
    assert a_old.stderr == "warning: --target-far is deprecated; use --target-fmr (FMR, the false-match rate)\n"
    fine = runner.invoke(app, ["eval", "aligned", str(small_set), *meta, "--target-fmr", "1e-4", *out, *AL])
    assert fine.exit_code == 2 and "pass a coarser --target-fmr or a --threshold" in fine.stderr
    # the old spellings stay out of the help
    help_text = runner.invoke(app, ["eval", "aligned", "--help"]).output
    assert "--fmr" in help_text and "--target-fmr" in help_text
    assert "--far" not in help_text and "--target-far" not in help_text


def test_cli_summary_says_fmr(small_set: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["eval", "aligned", str(small_set), "--out", str(tmp_path), "--no-cache", "--no-plots", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert "% @ FMR 1e-2" in res.stdout and "n/a @ FMR 1e-3 (< 1/150)" in res.stdout  # 150 impostor pairs
    assert "FAR" not in res.stdout and "FAR" not in (tmp_path / "report.md").read_text()
