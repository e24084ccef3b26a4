"""Evaluation reports: the report objects, and writing them as JSON, Markdown and PNG plots.

:mod:`.runner` measures and builds an :class:`AlignedReport` or :class:`PairsReport`;
this module turns one into ``report.json`` (:func:`write_json`), ``report.md``
(:func:`aligned_markdown`, :func:`pairs_markdown`) and the plots (:func:`aligned_plots`,
:func:`pairs_plots`, drawn by :mod:`.plots`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..calibration import fmr_key
from . import metrics as M
from . import protocols as P
from .embed import ImageFailure
from .quality import ErcSection

if TYPE_CHECKING:
    from .explain_page import ExplainPage


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, numpy values and paths as plain JSON types; NaN and infinities as null."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: Any, path: Path) -> Path:
    path.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n", encoding="utf-8")
    return path


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100.0 * x:.{digits}f}%"


def num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---- report objects ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    id: str
    sha256: str
    dim: int
    calibration_set: str | None
    card_thresholds: dict[str, float]


@dataclass(frozen=True)
class DatasetInfo:
    root: str
    n_identities: int
    n_images: int
    n_embedded: int
    n_from_cache: int
    detect: bool
    failures: list[ImageFailure]


@dataclass(frozen=True)
class FairnessInfo:
    column: str
    meta: str
    identities_without_group: list[str]
    result: M.Fairness


@dataclass(frozen=True)
class AlignedReport:
    """Everything ``facematch eval aligned`` measured, with its sample sizes."""

    model: ModelInfo
    dataset: DatasetInfo
    verification: P.Verification
    identification: P.Identification
    fairness: FairnessInfo | None
    hypersphere: P.Hypersphere
    seconds: dict[str, float]
    files: dict[str, str] = field(default_factory=dict)
    explanations: ExplainPage | None = None  # --explain N: the hardest errors, explained
    erc: ErcSection | None = None  # face quality: error versus reject


@dataclass(frozen=True)
class PairsReport:
    """Everything ``facematch eval pairs`` measured."""

    model: ModelInfo
    pairs_file: str
    format: str
    detect: bool
    n_images: int
    n_from_cache: int
    failures: list[ImageFailure]
    failed_pairs: list[tuple[str, str, bool]]
    excluded_entries: list[tuple[str, str]]
    result: P.PairsResult
    files: dict[str, str] = field(default_factory=dict)
    erc: ErcSection | None = None  # face quality: error versus reject


# ---- plots -------------------------------------------------------------------------------------


def aligned_plots(report: AlignedReport, scores: M.PairScores, out: Path) -> dict[str, str]:
    """ROC, DET, score histogram, CMC, DIR vs FPIR and (with groups) fairness PNGs in ``out``, by kind."""
    from . import plots

    files = {}
    ops = report.verification.operating_points
    curve = M.roc(scores.genuine, scores.impostor)
    files["roc"] = plots.roc_plot([(report.model.id, curve)], ops, out / "roc.png", "ROC: all pairs").name
    files["det"] = plots.det_plot([(report.model.id, curve)], ops, out / "det.png", "DET: all pairs").name
    thr = {f"FMR {fmr_key(p.target_fmr)}": p.threshold for p in ops if p.resolvable and p.threshold is not None}
    if report.fairness is not None:
        thr["shared (fairness)"] = report.fairness.result.shared_threshold
    files["histogram"] = plots.histogram_plot(scores.genuine, scores.impostor, thr, out / "scores.png").name
    cs = report.identification.closed_set
    if cs.cmc:
        files["cmc"] = plots.cmc_plot(
            cs.cmc,
            out / "cmc.png",
            n_probes=cs.n_probes,
            n_gallery=cs.n_gallery_identities,
            title=f"CMC: closed set, {report.identification.gallery_per_identity} gallery image(s) per identity",
        ).name
    o = report.identification.open_set
    if o is not None and o.curve is not None:
        files["dir_fpir"] = plots.dir_fpir_plot(
            o.curve, o.points, out / "dir_fpir.png", f"DIR vs FPIR: open set, {o.n_folds} folds pooled"
        ).name
    if report.fairness is not None and report.fairness.result.groups:
        files["fairness"] = plots.fairness_plot(
            report.fairness.result, out / "fairness.png", report.fairness.column
        ).name
    if report.erc is not None:
        files["erc"] = plots.erc_plot(report.erc, out / "erc.png").name
    return files


def pairs_plots(report: PairsReport, scores: M.PairScores, out: Path) -> dict[str, str]:
    """ROC, DET and score histogram PNGs of the pairs with faces in ``out``; returns their file names by kind."""
    from . import plots

    res = report.result
    curve = M.roc(scores.genuine, scores.impostor)
    files = {
        "roc": plots.roc_plot([(report.model.id, curve)], res.operating_points, out / "roc.png", "ROC: pairs").name,
        "det": plots.det_plot([(report.model.id, curve)], res.operating_points, out / "det.png", "DET: pairs").name,
    }
    thr = {
        f"FMR {fmr_key(p.target_fmr)}": p.threshold
        for p in res.operating_points
        if p.resolvable and p.threshold is not None
    }
    thr.update({f"card FMR {c.card_fmr}": c.threshold for c in res.card_points})
    files["histogram"] = plots.histogram_plot(scores.genuine, scores.impostor, thr, out / "scores.png").name
    if report.erc is not None:
        files["erc"] = plots.erc_plot(report.erc, out / "erc.png").name
    return files


PAIRS_CSV = "pairs.csv"


def decision_thresholds(res: P.PairsResult) -> list[tuple[str, float]]:
    """The thresholds a pairs report decides at, as (CSV column, threshold): each target FMR, then the card's."""
    cols = [
        (f"match_fmr_{fmr_key(p.target_fmr)}", float(p.threshold))
        for p in res.operating_points
        if p.resolvable and p.threshold is not None
    ]
    cols += [(f"match_card_fmr_{c.card_fmr}", float(c.threshold)) for c in res.card_points]
    return cols


def write_pairs_csv(
    path: Path,
    a: Sequence[Path],
    b: Sequence[Path],
    same: np.ndarray,
    similarity: np.ndarray,
    valid: np.ndarray,
    failures: Sequence[ImageFailure],
    res: P.PairsResult,
    root: Path | None = None,
) -> Path:
    """One row per pair: both images, same/different, similarity, the decision at each reported threshold
    (1 match, 0 no match; ``similarity >= threshold``, the SDK's rule) and why a pair has no score.

    Images are named relative to ``root`` (the folder the pair list's names resolve against).
    A pair whose image gave no embedding has an empty similarity and empty decisions; ``failure``
    names the side(s) and their status (``a: no_face``, ``b: invalid_image``, ...).
    """
    import csv

    status = {str(f.path): f.status for f in failures}
    cols = decision_thresholds(res)

    def name(img: Path) -> str:
        if root is not None:
            try:
                return str(Path(img).relative_to(root))
            except ValueError:
                pass
        return str(img)

    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image_a", "image_b", "same", "similarity", *(c for c, _ in cols), "failure"])
        for k in range(len(a)):
            row: list[object] = [name(a[k]), name(b[k]), int(bool(same[k]))]
            if valid[k]:
                s = float(similarity[k])
                row += [repr(s), *(int(s >= t) for _, t in cols), ""]  # exact: the decisions can be re-derived
            else:
                sides = [
                    f"{side}: {status[str(img)]}" for side, img in (("a", a[k]), ("b", b[k])) if str(img) in status
                ]
                row += ["", *("" for _ in cols), "; ".join(sides) or "no embedding"]
            w.writerow(row)
    return path


def write_report(report: AlignedReport | PairsReport, out: Path) -> None:
    """``report.json`` and ``report.md`` of ``report`` in ``out``."""
    write_json(report, out / "report.json")
    text = aligned_markdown(report) if isinstance(report, AlignedReport) else pairs_markdown(report)
    (out / "report.md").write_text(text, encoding="utf-8")


# ---- markdown ----------------------------------------------------------------------------------


OP_HEADER = ["target FMR", "TAR", "threshold", "observed FMR", "genuine", "impostor"]
CARD_HEADER = ["card FMR", "threshold", "observed FMR", "TAR"]


def _op_rows(points: Sequence[M.OperatingPoint]) -> list[list[str]]:
    rows = []
    for p in points:
        if p.resolvable:
            rows.append(
                [
                    f"{p.target_fmr:g}",
                    pct(p.tar),
                    num(p.threshold),
                    f"{p.observed_fmr:.2e}",
                    f"{p.n_genuine:,}",
                    f"{p.n_impostor:,}",
                ]
            )
        else:
            rows.append(
                [
                    f"{p.target_fmr:g}",
                    "not resolvable",
                    "—",
                    f"< 1/{p.n_impostor:,}",
                    f"{p.n_genuine:,}",
                    f"{p.n_impostor:,}",
                ]
            )
    return rows


def aligned_markdown(r: AlignedReport) -> str:
    """A short human report tying the numbers and plots together."""
    v, i, h, d = r.verification, r.identification, r.hypersphere, r.dataset
    lines = [
        f"# Evaluation of `{r.model.id}` on `{d.root}`",
        "",
        f"{d.n_images} images of {d.n_identities} identities; {d.n_embedded} embedded "
        f"({'detect + align' if d.detect else 'aligned crops'}), {len(d.failures)} failed, "
        f"{d.n_from_cache} from cache. "
        f"Model sha256 `{r.model.sha256[:12]}…`, {r.model.dim}-D.",
        "",
        "## Verification (all pairs)",
        "",
        f"{v.n_genuine:,} genuine and {v.n_impostor:,} impostor pairs; the finest measurable FMR is "
        f"1/{v.n_impostor:,} = {v.fmr_floor:.1e}.",
        "",
        f"- AUC **{v.auc:.5f}**, EER **{pct(v.eer, 3)}** (threshold {v.eer_threshold:.4f})",
        "",
        table(OP_HEADER, _op_rows(v.operating_points)),
        "",
    ]
    if v.card_points:
        lines += [
            f"The card's calibrated thresholds (set `{r.model.calibration_set}`) on this set:",
            "",
            table(
                CARD_HEADER,
                [[c.card_fmr, num(c.threshold), c.observed_fmr_text(), pct(c.tar)] for c in v.card_points],
            ),
            "",
        ]
        if r.model.calibration_set and Path(d.root).name == r.model.calibration_set:
            lines += [
                "*The card was calibrated on this same set, so its thresholds hit their FMRs here by construction; "
                "on other images the observed FMR can differ.*",
                "",
            ]
    if "roc" in r.files:
        lines += [f"![ROC]({r.files['roc']})", f"![DET]({r.files['det']})", f"![scores]({r.files['histogram']})", ""]
    cs = i.closed_set
    lines += [
        "## Identification",
        "",
        f"Closed set: gallery of {cs.n_gallery_images} images ({i.gallery_per_identity} per identity, seed {i.seed}) "
        f"for {cs.n_gallery_identities} identities, {cs.n_probes} probes: "
        + ", ".join(f"rank-{k} **{pct(val)}**" for k, val in cs.rank.items()),
        "",
    ]
    if "cmc" in r.files:
        lines += [f"![CMC]({r.files['cmc']})", ""]
    if i.open_set is not None:
        o = i.open_set
        lines += [
            f"Open set: {o.n_folds} folds, each holding a part of the identities out of the gallery "
            f"(gallery identities per fold: {o.gallery_identities_per_fold}); {o.n_mated} mated and "
            f"{o.n_nonmated} non-mated probes pooled.",
            "",
            table(
                ["target FPIR", "DIR", "threshold", "observed FPIR"],
                [
                    [f"{p.target_fpir:g}", pct(p.dir), num(p.threshold), f"{p.observed_fpir:.3f}"]
                    if p.resolvable
                    else [f"{p.target_fpir:g}", "not resolvable", "—", f"< 1/{p.n_nonmated}"]
                    for p in o.points
                ],
            ),
            "",
        ]
        if "dir_fpir" in r.files:
            lines += [f"![DIR vs FPIR]({r.files['dir_fpir']})", ""]
    if r.fairness is not None:
        f = r.fairness.result
        lines += [
            f"## Fairness by `{r.fairness.column}`",
            "",
            f"One shared threshold {f.shared_threshold:.4f} (target FMR {f.target_fmr:g} on all pairs); pairs count "
            f"toward a group when both images belong to it ({f.cross_group_impostors:,} cross-group impostor pairs, "
            f"FMR {f.cross_group_fmr if f.cross_group_fmr is None else f'{f.cross_group_fmr:.2e}'}).",
            "",
            table(
                ["group", "genuine", "impostor", "FNMR", "FMR", f"own threshold @ FMR {f.target_fmr:g}", "FNMR at own"],
                [
                    [
                        g.group,
                        f"{g.n_genuine:,}",
                        f"{g.n_impostor:,}",
                        pct(g.fnmr),
                        "n/a" if g.fmr is None else f"{g.fmr:.2e}",
                        num(g.own_threshold),
                        pct(g.own_fnmr),
                    ]
                    for g in f.groups
                ],
            ),
            "",
            f"max/min ratio: FNMR {num(f.fnmr_ratio, 3)}, FMR {num(f.fmr_ratio, 3)} "
            "(n/a when a group has no errors); gap of the groups' own thresholds: "
            f"{num(f.own_threshold_gap)}.",
            "",
        ]
        if r.fairness.identities_without_group:
            lines += [
                f"Identities without a `{r.fairness.column}`: {', '.join(r.fairness.identities_without_group)}",
                "",
            ]
        if "fairness" in r.files:
            lines += [f"![fairness]({r.files['fairness']})", ""]
    a = h.angles
    lines += [
        "## Hypersphere health",
        "",
        f"- alignment (E‖f(x)−f(y)‖², genuine pairs): **{h.alignment:.4f}** (lower = tighter classes)",
        f"- uniformity (log E exp(−{h.uniformity_t:g}‖f(x)−f(y)‖²), all pairs): **{h.uniformity:.4f}** "
        "(lower = more spread)",
        f"- largest intra-class angle {a.max_intra_deg:.1f}° vs smallest inter-class angle {a.min_inter_deg:.1f}°: "
        f"open-set criterion {'met' if a.criterion_met else 'not met'}; met by {a.classes_meeting_criterion} of "
        f"{a.n_classes} classes; robust: 99th pct intra {a.intra_p99_deg:.1f}°, 1st pct inter {a.inter_p01_deg:.1f}°; "
        f"means {a.mean_intra_deg:.1f}° / {a.mean_inter_deg:.1f}°",
    ]
    if h.feature_norm is not None:
        n = h.feature_norm
        lines.append(
            f"- feature norm before normalisation: mean {n.mean:.2f} ± {n.std:.2f} "
            f"(5/50/95%: {n.p05:.2f}/{n.p50:.2f}/{n.p95:.2f}, n={n.n})"
        )
    else:
        lines.append(f"- feature norm: {h.feature_norm_note}")
    lines.append("")
    if r.erc is not None:
        lines += erc_markdown(r.erc, r.files.get("erc"))
    if r.explanations is not None:
        from .explain_page import explain_markdown

        lines += explain_markdown(r.explanations)
    if d.failures:
        lines += [
            "## Images without an embedding",
            "",
            table(["image", "status", "message"], [[f.path, f.status, f.message] for f in d.failures]),
            "",
        ]
    lines += ["All numbers with their sample sizes: `report.json`.", ""]
    return "\n".join(lines)


ERC_SHARES = (0.0, 0.05, 0.1, 0.2, 0.3)


def erc_markdown(e: ErcSection, plot: str | None) -> list[str]:
    """The face-quality section: FNMR after rejecting the lowest-quality images, per measure."""

    def at(curve: list[float | None], share: float) -> float | None:
        keys = [round(x, 6) for x in e.reject]
        return curve[keys.index(round(share, 6))] if round(share, 6) in keys else None

    extras = [x for x, on in (("mirror consistency", e.mirror), ("106-point pose", e.pose106)) if on]
    lines = [
        "## Face quality: error versus reject",
        "",
        f"FNMR at the fixed threshold {e.threshold:.4f} ({e.threshold_source}) of the {e.n_genuine_pairs:,} genuine "
        f"comparisons among {e.n_images} images, after rejecting {e.rejection} "
        "(a comparison counts when both its images are kept). Cut: the relative FNMR reduction; area: under the "
        f"curve from 0 to {e.reject[-1]:.0%} (lower is better). Components measured"
        + (f" with {' and '.join(extras)}." if extras else " without mirror consistency and the 106-point pose."),
        "",
    ]
    if e.unified_note:
        lines += [f"*Unified score: {e.unified_note}.*", ""]
    if e.fnmr_at_0 == 0.0:
        lines += [
            "*No genuine comparison fails at this threshold: there is no error for a quality measure to predict, "
            "so every curve is flat at zero and its cuts are undefined.*",
            "",
        ]
    header = ["measure", *[f"FNMR @ {x:.0%}" for x in ERC_SHARES], "cut @ 10%", "cut @ 20%", "area", "note"]
    rows = [
        [
            c.measure,
            *[pct(at(c.fnmr, x)) for x in ERC_SHARES],
            pct(c.cut_10, 1),
            pct(c.cut_20, 1),
            num(c.area, 5),
            c.note,
        ]
        for c in e.curves
    ]
    lines += [table(header, rows), ""]
    if plot:
        lines += [f"![ERC]({plot})", ""]
    return lines


def pairs_markdown(r: PairsReport) -> str:
    res = r.result
    acc = res.accuracy
    lines = [
        f"# Pair verification of `{r.model.id}` on `{r.pairs_file}`",
        "",
        f"{res.n_pairs} pairs ({r.format} format) over {r.n_images} images "
        f"({'detect + align, largest face' if r.detect else 'aligned crops'}; {r.n_from_cache} from cache). "
        f"{len(r.failures)} images gave no embedding; {res.n_failed_pairs} pairs involve them and are counted apart.",
        "",
        f"- accuracy ({len(acc.fold_accuracy)}-fold, folds {res.fold_source}): "
        f"**{pct(acc.mean_accuracy)} ± {pct(acc.std_accuracy)}** "
        f"on {res.n_genuine + res.n_impostor} pairs with faces ({res.n_genuine} genuine, {res.n_impostor} impostor)",
    ]
    if res.accuracy_failures_as_nonmatch is not None:
        lines.append(
            "- accuracy counting pairs with a failed image as non-matches: "
            f"{pct(res.accuracy_failures_as_nonmatch.mean_accuracy)} "
            f"on all {res.n_pairs} pairs"
        )
    lines += [
        f"- AUC **{res.auc:.5f}**, EER **{pct(res.eer, 3)}** (threshold {res.eer_threshold:.4f})",
        "",
        table(OP_HEADER, _op_rows(res.operating_points)),
        "",
    ]
    if res.card_points:
        lines += [
            table(
                CARD_HEADER,
                [[c.card_fmr, num(c.threshold), c.observed_fmr_text(), pct(c.tar)] for c in res.card_points],
            ),
            "",
        ]
    if "roc" in r.files:
        lines += [f"![ROC]({r.files['roc']})", f"![DET]({r.files['det']})", f"![scores]({r.files['histogram']})", ""]
    if "pairs_csv" in r.files:
        lines += [
            f"Every pair, its similarity and the decision at each threshold above: `{r.files['pairs_csv']}`.",
            "",
        ]
    if r.erc is not None:
        lines += erc_markdown(r.erc, r.files.get("erc"))
    if r.failures:
        lines += [
            "## Images without an embedding",
            "",
            table(["image", "status", "message"], [[f.path, f.status, f.message] for f in r.failures]),
            "",
        ]
    if r.excluded_entries:
        lines += [
            "## Entries that gave no pairs",
            "",
            table(["entry", "reason"], [[a, b] for a, b in r.excluded_entries]),
            "",
        ]
    lines += ["All numbers with their sample sizes: `report.json`.", ""]
    return "\n".join(lines)


__all__ = [
    "PAIRS_CSV",
    "AlignedReport",
    "DatasetInfo",
    "FairnessInfo",
    "ModelInfo",
    "PairsReport",
    "aligned_markdown",
    "aligned_plots",
    "decision_thresholds",
    "erc_markdown",
    "num",
    "pairs_markdown",
    "pairs_plots",
    "pct",
    "table",
    "to_jsonable",
    "write_json",
    "write_pairs_csv",
    "write_report",
]
