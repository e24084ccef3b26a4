"""End-to-end evaluations: images + a FaceMatcher → numbers, plots, ``report.json`` and ``report.md``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import thresholds_at_fmr
from ..errors import InvalidArgumentError
from . import metrics as M
from . import protocols as P
from .cache import EmbeddingCache
from .data import IdentitySet, list_identity_dir, read_groups, read_pairs
from .embed import EmbeddedSet, ImageFailure, embed_files, norms_available
from .report import num, pct, table, write_json

logger = logging.getLogger(__name__)


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


def model_info(matcher: Any) -> ModelInfo:
    card = matcher.embedder_card
    cal = card.calibration
    return ModelInfo(
        id=card.id,
        sha256=card.sha256,
        dim=int(matcher.dim),
        calibration_set=cal.set if cal is not None else None,
        card_thresholds=dict(cal.thresholds) if cal is not None else {},
    )


def open_cache(cache_dir: Path | None) -> EmbeddingCache | None:
    return EmbeddingCache(cache_dir) if cache_dir is not None else None


def embed_identity_set(
    matcher: Any, ids: IdentitySet, *, detect: bool, cache_dir: Path | None, progress: bool
) -> tuple[EmbeddedSet, np.ndarray, np.ndarray]:
    """Embed an identity set; returns the embedded set and the (embeddings, labels) of the images that worked."""
    cache = open_cache(cache_dir)
    try:
        emb = embed_files(matcher, ids.paths, detect=detect, cache=cache, progress=progress)
    finally:
        if cache is not None:
            cache.close()
    return emb, emb.vectors[emb.ok], ids.labels[emb.ok]


def run_aligned(
    matcher: Any,
    root: Path,
    out: Path,
    *,
    meta: Path | None = None,
    group_col: str = "gender",
    detect: bool = False,
    cache_dir: Path | None = None,
    fars: Sequence[float] = P.DEFAULT_FARS,
    fpirs: Sequence[float] = P.DEFAULT_FPIRS,
    target_far: float = 1e-3,
    threshold: float | None = None,
    seed: int = 0,
    plots: bool = True,
    progress: bool = True,
) -> AlignedReport:
    """Verification, identification, fairness and hypersphere health of a folder-per-identity set."""
    if threshold is not None and not (-1.0 <= threshold <= 1.0):
        raise InvalidArgumentError(f"a cosine threshold must be in [-1, 1], got {threshold}")
    t0 = time.perf_counter()
    ids = list_identity_dir(root)
    emb, x, y = embed_identity_set(matcher, ids, detect=detect, cache_dir=cache_dir, progress=progress)
    t_embed = time.perf_counter() - t0
    if np.unique(y).size < 2:
        raise InvalidArgumentError(f"fewer than two identities in {root} gave an embedding")

    groups = None
    group_names: list[str] = []
    missing: list[str] = []
    if meta is not None:
        table_ = read_groups(meta, group_col, ids.identities)
        group_names = sorted(set(table_.values()))
        missing = [i for i in ids.identities if i not in table_]
        code = {g: k for k, g in enumerate(group_names)}
        per_identity = np.array([code.get(table_.get(i, ""), len(group_names)) for i in ids.identities])
        groups = per_identity[y]

    scores = M.all_pair_scores(x, y, groups)
    model = model_info(matcher)
    ver = P.verification(scores, fars, model.card_thresholds)
    ident = P.identification(x, y, fpirs=fpirs, seed=seed)

    fair = None
    if groups is not None:
        shared = threshold
        if shared is None:
            shared = float(thresholds_at_fmr(scores.impostor, [target_far])[0])
            if not np.isfinite(shared):
                raise InvalidArgumentError(
                    f"target FAR {target_far:g} is finer than 1/{scores.impostor.size} impostor pairs; "
                    "pass a coarser --target-far or a --threshold"
                )
        fair = FairnessInfo(group_col, str(meta), missing, M.fairness(scores, group_names, shared, target_far))

    card = matcher.embedder_card
    has_norms = norms_available(card)
    note = (
        "pre-normalisation norm of the embedding output"
        if has_norms
        else "the model normalises its output and exposes no norm output: not available"
    )
    norms = emb.norms[emb.ok] if has_norms else None
    health = P.hypersphere(scores, x, y, norms, note)

    report = AlignedReport(
        model=model,
        dataset=DatasetInfo(
            root=str(root),
            n_identities=len(ids.identities),
            n_images=len(ids.paths),
            n_embedded=int(emb.ok.sum()),
            n_from_cache=emb.n_from_cache,
            detect=detect,
            failures=emb.failures,
        ),
        verification=ver,
        identification=ident,
        fairness=fair,
        hypersphere=health,
        seconds={"embed": round(t_embed, 3), "total": 0.0},
    )
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if plots:
        files.update(_aligned_plots(report, scores, out, threshold=fair.result.shared_threshold if fair else None))
    report.files.update(files)
    report.seconds["total"] = round(time.perf_counter() - t0, 3)
    write_json(report, out / "report.json")
    (out / "report.md").write_text(aligned_markdown(report), encoding="utf-8")
    return report


def _aligned_plots(report: AlignedReport, scores: M.PairScores, out: Path, threshold: float | None) -> dict[str, str]:
    from . import plots

    files = {}
    ops = report.verification.operating_points
    curve = M.roc(scores.genuine, scores.impostor)
    files["roc"] = plots.roc_plot([(report.model.id, curve)], ops, out / "roc.png", "ROC: all pairs").name
    thr = {f"FAR {p.target_far:g}": p.threshold for p in ops if p.resolvable and p.threshold is not None}
    if threshold is not None:
        thr["shared (fairness)"] = threshold
    files["histogram"] = plots.histogram_plot(scores.genuine, scores.impostor, thr, out / "scores.png").name
    if report.fairness is not None and report.fairness.result.groups:
        files["fairness"] = plots.fairness_plot(
            report.fairness.result, out / "fairness.png", report.fairness.column
        ).name
    return files


def _op_rows(points: Sequence[M.OperatingPoint]) -> list[list[str]]:
    rows = []
    for p in points:
        if p.resolvable:
            rows.append(
                [
                    f"{p.target_far:g}",
                    pct(p.tar),
                    num(p.threshold),
                    f"{p.observed_far:.2e}",
                    f"{p.n_genuine:,}",
                    f"{p.n_impostor:,}",
                ]
            )
        else:
            rows.append(
                [
                    f"{p.target_far:g}",
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
        f"{v.n_genuine:,} genuine and {v.n_impostor:,} impostor pairs; the finest measurable FAR is "
        f"1/{v.n_impostor:,} = {v.far_floor:.1e}.",
        "",
        f"- AUC **{v.auc:.5f}**, EER **{pct(v.eer, 3)}** (threshold {v.eer_threshold:.4f})",
        "",
        table(["target FAR", "TAR", "threshold", "observed FAR", "genuine", "impostor"], _op_rows(v.operating_points)),
        "",
    ]
    if v.card_points:
        lines += [
            f"The card's calibrated thresholds (set `{r.model.calibration_set}`) on this set:",
            "",
            table(
                ["card FMR", "threshold", "observed FAR", "TAR"],
                [[c.card_fmr, num(c.threshold), c.observed_far_text(), pct(c.tar)] for c in v.card_points],
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
        lines += [f"![ROC]({r.files['roc']})", f"![scores]({r.files['histogram']})", ""]
    cs = i.closed_set
    lines += [
        "## Identification",
        "",
        f"Closed set: gallery of {cs.n_gallery_images} images ({i.gallery_per_identity} per identity, seed {i.seed}) "
        f"for {cs.n_gallery_identities} identities, {cs.n_probes} probes: "
        + ", ".join(f"rank-{k} **{pct(val)}**" for k, val in cs.rank.items()),
        "",
    ]
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
    if r.fairness is not None:
        f = r.fairness.result
        lines += [
            f"## Fairness by `{r.fairness.column}`",
            "",
            f"One shared threshold {f.shared_threshold:.4f} (target FAR {f.target_far:g} on all pairs); pairs count "
            f"toward a group when both images belong to it ({f.cross_group_impostors:,} cross-group impostor pairs, "
            f"FMR {f.cross_group_fmr if f.cross_group_fmr is None else f'{f.cross_group_fmr:.2e}'}).",
            "",
            table(
                ["group", "genuine", "impostor", "FNMR", "FMR", f"own threshold @ {f.target_far:g}", "FNMR at own"],
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
    if d.failures:
        lines += [
            "## Images without an embedding",
            "",
            table(["image", "status", "message"], [[f.path, f.status, f.message] for f in d.failures]),
            "",
        ]
    lines += ["All numbers with their sample sizes: `report.json`.", ""]
    return "\n".join(lines)


# ---- pairs -------------------------------------------------------------------------------


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


def run_pairs(
    matcher: Any,
    pairs_file: Path,
    out: Path,
    *,
    root: Path | None = None,
    detect: bool = True,
    cache_dir: Path | None = None,
    fars: Sequence[float] = P.DEFAULT_FARS,
    seed: int = 0,
    plots: bool = True,
    progress: bool = True,
) -> PairsReport:
    """Verify a list of pairs; images without a face are reported and their pairs counted apart."""
    pl = read_pairs(pairs_file, root, seed)
    unique = list(dict.fromkeys([*pl.a, *pl.b]))
    index = {p: k for k, p in enumerate(unique)}
    cache = open_cache(cache_dir)
    try:
        emb = embed_files(matcher, unique, detect=detect, cache=cache, progress=progress)
    finally:
        if cache is not None:
            cache.close()
    ia = np.array([index[p] for p in pl.a])
    ib = np.array([index[p] for p in pl.b])
    valid = emb.ok[ia] & emb.ok[ib]
    scores = np.clip(np.einsum("ij,ij->i", emb.vectors[ia], emb.vectors[ib]), -1.0, 1.0).astype(np.float64)
    model = model_info(matcher)
    res = P.pairs_protocol(
        scores, pl.same, valid, pl.folds, fars=fars, seed=seed, card_thresholds=model.card_thresholds
    )
    failed = [(str(pl.a[k]), str(pl.b[k]), bool(pl.same[k])) for k in np.flatnonzero(~valid)]
    report = PairsReport(
        model=model,
        pairs_file=str(pairs_file),
        format=pl.source_format,
        detect=detect,
        n_images=len(unique),
        n_from_cache=emb.n_from_cache,
        failures=emb.failures,
        failed_pairs=failed,
        excluded_entries=pl.excluded,
        result=res,
    )
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        from . import plots as plt_

        g, i = scores[valid & pl.same], scores[valid & ~pl.same]
        curve = M.roc(g, i)
        report.files["roc"] = plt_.roc_plot(
            [(model.id, curve)], res.operating_points, out / "roc.png", "ROC: pairs"
        ).name
        thr = {
            f"FAR {p.target_far:g}": p.threshold
            for p in res.operating_points
            if p.resolvable and p.threshold is not None
        }
        thr.update({f"card FMR {c.card_fmr}": c.threshold for c in res.card_points})
        report.files["histogram"] = plt_.histogram_plot(g, i, thr, out / "scores.png").name
    write_json(report, out / "report.json")
    (out / "report.md").write_text(pairs_markdown(report), encoding="utf-8")
    return report


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
        table(
            ["target FAR", "TAR", "threshold", "observed FAR", "genuine", "impostor"], _op_rows(res.operating_points)
        ),
        "",
    ]
    if res.card_points:
        lines += [
            table(
                ["card FMR", "threshold", "observed FAR", "TAR"],
                [[c.card_fmr, num(c.threshold), c.observed_far_text(), pct(c.tar)] for c in res.card_points],
            ),
            "",
        ]
    if "roc" in r.files:
        lines += [f"![ROC]({r.files['roc']})", f"![scores]({r.files['histogram']})", ""]
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
    "AlignedReport",
    "ModelInfo",
    "PairsReport",
    "aligned_markdown",
    "pairs_markdown",
    "run_aligned",
    "run_pairs",
]
