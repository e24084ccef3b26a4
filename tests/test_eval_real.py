"""Real evaluations with the default pack: celeb24 (aligned), wild and package photos (end to end), calibration."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from facematch.calibration import fmr_key
from facematch.cards import DEFAULT_EMBEDDER, sidecar_path
from facematch.eval.cli import calibrate, eval_app
from facematch.eval.report import aligned_markdown, num, pct
from facematch.eval.runner import AlignedReport, run_aligned, run_pairs
from facematch.model_files import load_card, resolve_model_path

pytestmark = pytest.mark.slow  # whole celeb24/wild evaluations

app = typer.Typer()
app.add_typer(eval_app, name="eval")
app.command("calibrate")(calibrate)
runner = CliRunner()


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="session")
def celeb24_report(matcher, celeb24_dir: Path, eval_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("celeb24-report")
    return run_aligned(
        matcher, celeb24_dir, out, meta=celeb24_dir / "identities.csv", cache_dir=eval_cache, progress=False
    ), out


def _expected_pairs(celeb24_dir: Path) -> tuple[int, int]:
    counts = [len(list(p.glob("*.png"))) for p in celeb24_dir.iterdir() if p.is_dir()]
    n = sum(counts)
    gen = sum(c * (c - 1) // 2 for c in counts)
    return gen, n * (n - 1) // 2 - gen


def test_celeb24_report_numbers(celeb24_report, celeb24_dir: Path) -> None:
    rep, _ = celeb24_report
    assert isinstance(rep, AlignedReport)
    v = rep.verification
    assert (v.n_genuine, v.n_impostor) == _expected_pairs(celeb24_dir)
    assert rep.dataset.failures == [] and rep.dataset.n_embedded == rep.dataset.n_images
    assert v.auc > 0.99 and v.eer < 0.05
    p2, p3, p4 = v.operating_points
    assert p3.resolvable and p3.tar is not None and p3.tar > 0.85
    assert p2.tar is not None and p4.tar is not None and p2.tar >= p3.tar >= p4.tar
    assert p4.observed_fmr is not None and p4.observed_fmr <= 1e-4
    c = rep.identification.closed_set
    assert c.rank[1] > 0.9 and c.rank[5] >= c.rank[1] and c.n_probes == rep.dataset.n_images - 24
    o = rep.identification.open_set
    assert o is not None and all(p.resolvable for p in o.points) and o.points[0].dir is not None
    assert o.points[0].dir > 0.8
    h = rep.hypersphere
    assert 0.0 < h.alignment < 2.0 and -4.0 < h.uniformity < 0.0
    assert h.feature_norm is not None and h.feature_norm.mean > 1.0  # w600k_mbf is not normalised by its graph
    assert 0.0 < h.angles.max_intra_deg <= 180.0 and h.angles.n_classes == 24


def test_celeb24_fairness_by_gender(celeb24_report) -> None:
    rep, _ = celeb24_report
    assert rep.fairness is not None
    f = rep.fairness.result
    assert [g.group for g in f.groups] == ["F", "M"]
    assert sum(g.n_impostor for g in f.groups) + f.cross_group_impostors == rep.verification.n_impostor
    assert sum(g.n_genuine for g in f.groups) == rep.verification.n_genuine
    for g in f.groups:
        assert g.fnmr is not None and g.fmr is not None and g.own_threshold is not None
    fnmrs = [g.fnmr for g in f.groups if g.fnmr is not None]
    assert f.fnmr_ratio == pytest.approx(max(fnmrs) / min(fnmrs))


def test_celeb24_agrees_with_the_cards_calibration(celeb24_report) -> None:
    rep, _ = celeb24_report
    # docs/eval.md says the packaged card was calibrated on this very set: hold it to that
    cal = load_card(DEFAULT_EMBEDDER).calibration
    assert cal is not None and cal.set == "celeb24" and cal.n_impostor_pairs == rep.verification.n_impostor
    assert [p.target_fmr for p in rep.verification.operating_points] == [1e-2, 1e-3, 1e-4]
    for p in rep.verification.operating_points:
        key = fmr_key(p.target_fmr)
        assert p.threshold == pytest.approx(cal.thresholds[key], abs=2e-6)
        assert p.tar == pytest.approx(cal.tar_at_threshold[key], abs=2e-6)
    # and the card's own thresholds, checked on the set, hit their FMRs
    assert [c.card_fmr for c in rep.verification.card_points] == ["1e-2", "1e-3", "1e-4"]
    for c in rep.verification.card_points:
        assert c.fmr_resolvable and c.observed_fmr <= float(c.card_fmr)
        assert c.tar == pytest.approx(cal.tar_at_threshold[c.card_fmr], abs=1e-4)


def test_celeb24_outputs_written(celeb24_report) -> None:
    rep, out = celeb24_report
    data = json.loads((out / "report.json").read_text())
    assert data["verification"]["n_impostor"] == rep.verification.n_impostor
    assert data["fairness"]["result"]["groups"][0]["n_genuine"] > 0
    assert data["verification"]["operating_points"][1]["target_fmr"] == 1e-3
    md = (out / "report.md").read_text()
    assert md == aligned_markdown(rep)
    for p in rep.verification.operating_points:  # TAR@FMR rows: the report's own numbers
        assert f"| {p.target_fmr:g} | {pct(p.tar)} | {num(p.threshold)} | {p.observed_fmr:.2e} |" in md
    assert f"rank-1 **{pct(rep.identification.closed_set.rank[1])}**" in md and "Fairness by `gender`" in md
    assert "FAR" not in md
    for name in ("roc.png", "scores.png", "fairness.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md


def test_rerun_is_served_from_the_cache(
    celeb24_report, matcher, celeb24_dir: Path, eval_cache: Path, tmp_path: Path
) -> None:
    first, _ = celeb24_report
    t0 = time.perf_counter()
    again = run_aligned(matcher, celeb24_dir, tmp_path, cache_dir=eval_cache, plots=False, progress=False)
    assert again.dataset.n_from_cache == again.dataset.n_images
    assert again.seconds["embed"] < 5.0 and time.perf_counter() - t0 < 30.0
    assert again.verification.auc == first.verification.auc
    assert again.fairness is None


def test_calibrate_writes_the_card_and_reproduces_it(celeb24_dir: Path, eval_cache: Path, tmp_path: Path) -> None:
    packaged = load_card(DEFAULT_EMBEDDER)
    assert packaged.card_path is not None
    card_json = tmp_path / "w600k_mbf.json"
    raw = json.loads(packaged.card_path.read_text())
    raw.pop("calibration", None)
    card_json.write_text(json.dumps(raw))
    assert load_card(card_json).calibration is None
    plot = tmp_path / "curve.png"
    res = runner.invoke(
        app,
        [
            "calibrate",
            str(celeb24_dir),
            "--model",
            str(card_json),
            "--write",
            "--in-place",  # a card named by its path is updated where it is only when asked
            "--plot",
            str(plot),
            "--cache-dir",
            str(eval_cache),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"wrote the calibrated card 'w600k_mbf' to {card_json}" in res.output
    cal = load_card(card_json).calibration
    assert cal is not None and cal.set == "celeb24" and cal.n_impostor_pairs == _expected_pairs(celeb24_dir)[1]
    assert "--write" in cal.command and cal.command.startswith("facematch calibrate ")
    assert set(cal.thresholds) == {"1e-2", "1e-3", "1e-4"}
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # the packaged card's calibration is reproduced exactly (docs/eval.md says so)
    assert packaged.calibration is not None and packaged.calibration.set == "celeb24"
    assert cal.thresholds == packaged.calibration.thresholds
    assert cal.tar_at_threshold == packaged.calibration.tar_at_threshold
    assert cal.curve_similarity == packaged.calibration.curve_similarity
    assert cal.curve_fmr == packaged.calibration.curve_fmr
    # what the gallery uses: a threshold for any FMR on the curve
    assert cal.threshold_for(1e-3) == cal.thresholds["1e-3"]
    assert 0 < cal.fmr_at(cal.thresholds["1e-2"]) <= 1e-2


def test_calibrate_dry_run_and_onnx_sidecar(celeb24_dir: Path, eval_cache: Path, tmp_path: Path) -> None:
    packaged = load_card(DEFAULT_EMBEDDER)
    model = tmp_path / "my_model.onnx"
    shutil.copyfile(resolve_model_path(packaged), model)
    raw = json.loads(packaged.to_json())
    raw.pop("calibration", None)
    raw["file"] = model.name
    sidecar_path(model).write_text(json.dumps(raw))
    dry = runner.invoke(
        app, ["calibrate", str(celeb24_dir), "--model", str(model), "--cache-dir", str(eval_cache), "--no-progress"]
    )
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and load_card(model).calibration is None
    res = runner.invoke(
        app,
        [
            "calibrate",
            str(celeb24_dir),
            "--model",
            str(model),
            "--set-name",
            "c24",
            "--fmr",
            "0.01",
            "--write",
            "--in-place",
            "--cache-dir",
            str(eval_cache),
            "--no-progress",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["written_to"] == str(sidecar_path(model).resolve())
    cal = load_card(model).calibration
    assert cal is not None and cal.set == "c24" and set(cal.thresholds) == {"1e-2", "1e-3"}  # + the default FMR


def test_cli_eval_aligned_json_and_errors(celeb24_dir: Path, eval_cache: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "eval",
            "aligned",
            str(celeb24_dir),
            "--out",
            str(tmp_path / "r"),
            "--cache-dir",
            str(eval_cache),
            "--no-plots",
            "--no-progress",
            "--json",
            "--fmr",
            "0.01",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [p["target_fmr"] for p in data["verification"]["operating_points"]] == [0.01]
    assert (tmp_path / "r" / "report.md").is_file()
    bad = runner.invoke(app, ["eval", "aligned", str(tmp_path / "missing"), "--no-cache"])
    assert bad.exit_code == 2 and "not a directory" in bad.output
    bad = runner.invoke(app, ["eval", "aligned", str(celeb24_dir), "--meta", str(tmp_path / "none.csv"), "--no-cache"])
    assert bad.exit_code == 2 and "not found" in bad.output


def _blank(path: Path) -> Path:
    cv2.imwrite(str(path), np.full((200, 200, 3), 127, np.uint8))
    return path


def test_pairs_end_to_end_on_package_photos_reports_no_face(matcher, package_images, tmp_path: Path) -> None:
    yao = package_images["yaoming.jpg"]
    img = cv2.imread(str(yao))
    small = tmp_path / "yao_small.jpg"
    cv2.imwrite(str(small), cv2.resize(img, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA))
    blank = _blank(tmp_path / "blank.png")
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "a,b,same\n"
        f"{yao},{small.name},1\n"
        f"{yao},{package_images['gdp.jpg']},0\n"
        f"{small.name},{package_images['players.jpg']},0\n"
        f"{yao},{blank.name},1\n"
        f"{small.name},missing.jpg,0\n"
    )
    rep = run_pairs(matcher, csv, tmp_path / "out", plots=False, progress=False)
    r = rep.result
    assert r.n_pairs == 5 and r.n_failed_pairs == 2 and (r.n_genuine, r.n_impostor) == (1, 2)
    assert sorted((Path(f.path).name, f.status) for f in rep.failures) == [
        ("blank.png", "no_face"),
        ("missing.jpg", "unreadable"),
    ]
    assert rep.failed_pairs[0] == (str(yao), str(blank), True)
    assert r.auc == 1.0
    assert r.accuracy_failures_as_nonmatch is not None
    md = (tmp_path / "out" / "report.md").read_text()
    assert "no_face" in md and "blank.png" in md
    cli = runner.invoke(app, ["eval", "pairs", str(csv), "--out", str(tmp_path / "cli"), "--no-cache", "--no-plots"])
    assert cli.exit_code == 0, cli.output
    assert "no embedding for 2 image(s); 2 pair(s) affected" in cli.output and "blank.png: no_face" in cli.output


def test_wild_pairs_end_to_end(matcher, wild_dir: Path, eval_cache: Path, tmp_path: Path) -> None:
    rep = run_pairs(matcher, wild_dir / "labels.csv", tmp_path, cache_dir=eval_cache, progress=False)
    r = rep.result
    assert rep.format == "labels" and r.n_pairs == r.n_genuine + r.n_impostor + r.n_failed_pairs
    assert r.n_genuine > 10 and r.n_impostor > 100
    assert r.accuracy.mean_accuracy > 0.95 and r.auc > 0.98
    assert {e for e, _ in rep.excluded_entries} >= {"rgba_32bit.png"}
    assert r.operating_points[0].resolvable and not r.operating_points[1].resolvable  # 1e-3 < 1/impostors
    assert (tmp_path / "roc.png").is_file()


def test_eval_aligned_detect_reports_images_without_a_face(
    matcher,
    wild_dir: Path,
    wild_labels: dict[str, list[str]],
    eval_cache: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "ids"
    for name, ids in wild_labels.items():
        if len(ids) == 1 and ids[0] in ("obama", "kit_harington", "alex_lacamoire", "biden"):
            (root / ids[0]).mkdir(parents=True, exist_ok=True)
            (root / ids[0] / name).symlink_to(wild_dir / name)
    _blank(root / "biden" / "zz_blank.png")
    rep = run_aligned(matcher, root, tmp_path / "out", detect=True, cache_dir=eval_cache, plots=False, progress=False)
    assert rep.dataset.detect and [f.status for f in rep.dataset.failures] == ["no_face"]
    assert rep.dataset.n_embedded == rep.dataset.n_images - 1
    assert rep.verification.auc > 0.98
    assert "zz_blank.png" in (tmp_path / "out" / "report.md").read_text()
