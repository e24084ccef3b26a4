"""The report module: report objects written as report.md, report.json and plots (synthetic reports, no models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facematch.eval import metrics as M
from facematch.eval import protocols as P
from facematch.eval.embed import ImageFailure
from facematch.eval.report import (
    AlignedReport,
    DatasetInfo,
    FairnessInfo,
    ModelInfo,
    PairsReport,
    aligned_markdown,
    aligned_plots,
    num,
    pairs_markdown,
    pairs_plots,
    pct,
    write_report,
)

FAILURE = ImageFailure("root/setA/ann/x.png", "no_face", "no face found in the image")


def _clusters(n_classes: int, per_class: int, spread: float, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(n_classes, dim))
    x = np.repeat(centres, per_class, axis=0) + spread * rng.normal(size=(n_classes * per_class, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(n_classes), per_class)


def _model(card: dict[str, float]) -> ModelInfo:
    return ModelInfo(id="toy", sha256="ab" * 32, dim=32, calibration_set="setA", card_thresholds=card)


def _aligned_report() -> tuple[AlignedReport, M.PairScores]:
    x, y = _clusters(12, 6, spread=0.6)
    groups = y % 2
    scores = M.all_pair_scores(x, y, groups)
    card = {"1e-1": 0.35, "1e-4": 0.6}
    ver = P.verification(scores, (1e-1, 1e-2, 1e-4), card)
    shared = ver.operating_points[1].threshold
    assert shared is not None
    fair = FairnessInfo("gender", "meta.csv", ["zed"], M.fairness(scores, ["F", "M"], shared, 1e-2))
    report = AlignedReport(
        model=_model(card),
        dataset=DatasetInfo("root/setA", 13, 73, 72, 5, False, [FAILURE]),
        verification=ver,
        identification=P.identification(x, y, fpirs=(0.1, 1e-3)),
        fairness=fair,
        hypersphere=P.hypersphere(scores, x, y, np.full(72, 20.0), "pre-normalisation norm"),
        seconds={"embed": 0.1, "total": 0.2},
    )
    return report, scores


def _op_row(p: M.OperatingPoint) -> str:
    if p.resolvable:
        return (
            f"| {p.target_fmr:g} | {pct(p.tar)} | {num(p.threshold)} | {p.observed_fmr:.2e} "
            f"| {p.n_genuine:,} | {p.n_impostor:,} |"
        )
    return f"| {p.target_fmr:g} | not resolvable | — | < 1/{p.n_impostor:,} | {p.n_genuine:,} | {p.n_impostor:,} |"


def test_aligned_markdown_tables_hold_the_reports_numbers() -> None:
    r, _ = _aligned_report()
    md = aligned_markdown(r)
    v = r.verification
    lines = md.splitlines()
    assert lines[0] == "# Evaluation of `toy` on `root/setA`"
    assert "72 embedded (aligned crops), 1 failed, 5 from cache" in md
    assert f"the finest measurable FMR is 1/{v.n_impostor:,} = {v.fmr_floor:.1e}" in md
    assert "| target FMR | TAR | threshold | observed FMR | genuine | impostor |" in lines
    assert [p.resolvable for p in v.operating_points] == [True, True, False]
    for p in v.operating_points:
        assert _op_row(p) in lines
    assert "| card FMR | threshold | observed FMR | TAR |" in lines
    for c in v.card_points:
        assert f"| {c.card_fmr} | {num(c.threshold)} | {c.observed_fmr_text()} | {pct(c.tar)} |" in lines
    assert "calibrated on this same set" in md  # the set's folder name is the card's calibration set
    cs = r.identification.closed_set
    assert f"rank-1 **{pct(cs.rank[1])}**" in md and f"{cs.n_probes} probes" in md
    o = r.identification.open_set
    assert o is not None and [p.resolvable for p in o.points] == [True, False]
    assert f"| 0.001 | not resolvable | — | < 1/{o.n_nonmated} |" in lines
    f = r.fairness
    assert f is not None
    assert f"One shared threshold {f.result.shared_threshold:.4f} (target FMR 0.01 on all pairs)" in md
    for g in f.result.groups:
        assert f"| {g.group} | {g.n_genuine:,} | {g.n_impostor:,} | {pct(g.fnmr)} |" in md
    assert "| own threshold @ FMR 0.01 | FNMR at own |" in md
    assert "Identities without a `gender`: zed" in md
    assert f"| {FAILURE.path} | no_face | {FAILURE.message} |" in lines
    assert "mean 20.00 ± 0.00" in md
    assert "![ROC]" not in md  # no plots were made
    assert "FAR" not in md  # FMR is the one name


def test_write_report_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    r, scores = _aligned_report()
    r.files.update(aligned_plots(r, scores, tmp_path))
    assert r.files == {
        "roc": "roc.png",
        "det": "det.png",
        "histogram": "scores.png",
        "cmc": "cmc.png",
        "dir_fpir": "dir_fpir.png",
        "fairness": "fairness.png",
    }
    for name in r.files.values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_report(r, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert md == aligned_markdown(r)
    assert "![ROC](roc.png)" in md and "![fairness](fairness.png)" in md
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["verification"]["n_impostor"] == r.verification.n_impostor
    assert data["fairness"]["result"]["target_fmr"] == 0.01
    assert data["verification"]["operating_points"][2] == {
        "target_fmr": 1e-4,
        "resolvable": False,
        "threshold": None,
        "tar": None,
        "fnmr": None,
        "observed_fmr": None,
        "n_genuine": r.verification.n_genuine,
        "n_impostor": r.verification.n_impostor,
        "fmr_floor": pytest.approx(1 / r.verification.n_impostor),
    }


def _pairs_report() -> tuple[PairsReport, np.ndarray, np.ndarray, np.ndarray]:
    same = np.r_[np.ones(60, bool), np.zeros(60, bool)]
    scores = np.r_[np.linspace(0.3, 0.9, 60), np.linspace(-0.3, 0.4, 60)]
    valid = np.ones(120, bool)
    valid[5] = False
    card = {"1e-2": 0.35}
    res = P.pairs_protocol(scores, same, valid, None, fmrs=(1e-1, 1e-3), card_thresholds=card)
    report = PairsReport(
        model=_model(card),
        pairs_file="pairs.csv",
        format="csv",
        detect=True,
        n_images=80,
        n_from_cache=0,
        failures=[FAILURE],
        failed_pairs=[("a.jpg", FAILURE.path, True)],
        excluded_entries=[("group.jpg", "2 labelled people: which face is whom is not known")],
        result=res,
    )
    return report, scores, same, valid


def test_pairs_markdown_tables_hold_the_reports_numbers() -> None:
    r, *_ = _pairs_report()
    res = r.result
    md = pairs_markdown(r)
    lines = md.splitlines()
    assert lines[0] == "# Pair verification of `toy` on `pairs.csv`"
    assert "120 pairs (csv format) over 80 images (detect + align, largest face; 0 from cache)" in md
    assert "1 images gave no embedding; 1 pairs involve them and are counted apart" in md
    assert f"**{pct(res.accuracy.mean_accuracy)} ± {pct(res.accuracy.std_accuracy)}**" in md
    assert res.accuracy_failures_as_nonmatch is not None
    assert f"{pct(res.accuracy_failures_as_nonmatch.mean_accuracy)} on all 120 pairs" in md
    assert "| target FMR | TAR | threshold | observed FMR | genuine | impostor |" in lines
    assert [p.resolvable for p in res.operating_points] == [True, False]
    for p in res.operating_points:
        assert _op_row(p) in lines
    (c,) = res.card_points
    assert f"| 1e-2 | 0.3500 | {c.observed_fmr_text()} | {pct(c.tar)} |" in lines
    assert f"| {FAILURE.path} | no_face | {FAILURE.message} |" in lines
    assert "| group.jpg | 2 labelled people: which face is whom is not known |" in lines
    assert "FAR" not in md


def test_pairs_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    r, scores, same, valid = _pairs_report()
    files = pairs_plots(r, M.PairScores(scores[valid & same], scores[valid & ~same]), tmp_path)
    assert files == {"roc": "roc.png", "det": "det.png", "histogram": "scores.png"}
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in files.values())
