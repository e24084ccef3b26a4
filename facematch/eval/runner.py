"""End-to-end evaluations: images + a FaceMatcher → the protocols' numbers, as a report.

The runner embeds the images (:mod:`.embed`), runs the protocols (:mod:`.protocols`) and
builds the report object; :mod:`.report` writes it (``report.json``, ``report.md``, plots).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import check_rate, check_threshold, thresholds_at_fmr
from ..errors import InvalidArgumentError
from . import metrics as M
from . import protocols as P
from .cache import EmbeddingCache
from .data import IdentitySet, list_identity_dir, read_groups, read_pairs
from .embed import EmbeddedSet, embed_files, norms_available
from .report import (
    PAIRS_CSV,
    AlignedReport,
    DatasetInfo,
    FairnessInfo,
    ModelInfo,
    PairsReport,
    aligned_plots,
    pairs_plots,
    write_pairs_csv,
    write_report,
)

logger = logging.getLogger(__name__)

DEFAULT_TARGET_FMR = 1e-3  # the FMR whose threshold on all pairs is the fairness threshold


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
    fmrs: Sequence[float] = P.DEFAULT_FMRS,
    fpirs: Sequence[float] = P.DEFAULT_FPIRS,
    target_fmr: float = DEFAULT_TARGET_FMR,
    threshold: float | None = None,
    seed: int = 0,
    plots: bool = True,
    progress: bool = True,
    erc: bool = True,
    mirror: bool = False,
    pose106: bool = False,
    explain: int = 0,
) -> AlignedReport:
    """Verification, identification, fairness, hypersphere health and (``erc``) face quality's
    error-versus-reject curves of a folder-per-identity set.

    ``mirror`` adds mirror consistency to the quality components (one extra embedding per
    image), ``pose106`` the 106-point pose. ``explain=N`` adds the N hardest false non-matches
    and N closest false matches at the card's default threshold, each explained and drawn
    (:mod:`.explain_page`).
    """
    target_fmr = check_rate(target_fmr, "target_fmr")
    if threshold is not None:
        threshold = check_threshold(threshold)
    if isinstance(explain, bool) or not isinstance(explain, int) or explain < 0:
        raise InvalidArgumentError(f"explain must be a whole number of pairs >= 0, got {explain!r}")
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
    ver = P.verification(scores, fmrs, model.card_thresholds)
    ident = P.identification(x, y, fpirs=fpirs, seed=seed)

    fair = None
    if groups is not None:
        shared = threshold
        if shared is None:
            shared = float(thresholds_at_fmr(scores.impostor, [target_fmr])[0])
            if not np.isfinite(shared):
                raise InvalidArgumentError(
                    f"target FMR {target_fmr:g} is finer than 1/{scores.impostor.size} impostor pairs; "
                    "pass a coarser --target-fmr or a --threshold"
                )
        fair = FairnessInfo(group_col, str(meta), missing, M.fairness(scores, group_names, shared, target_fmr))

    card = matcher.embedder_card
    has_norms = norms_available(card)
    note = (
        "pre-normalisation norm of the embedding output"
        if has_norms
        else "the model normalises its output and exposes no norm output: not available"
    )
    norms = emb.norms[emb.ok] if has_norms else None
    health = P.hypersphere(scores, x, y, norms, note)
    section = None
    if erc:
        from .erc import GenuinePairs
        from .quality import assess_set, erc_section

        quals = assess_set(matcher, emb, detect=detect, mirror=mirror, pose106=pose106)
        kept = [q for q in quals if q is not None]
        section = erc_section(
            card,
            kept,
            GenuinePairs.of(x, y),
            scores.impostor,
            labels=y,
            set_name=Path(root).resolve().name,
            mirror=mirror,
            pose106=pose106,
            seed=seed,
        )

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
        erc=section,
    )
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        report.files.update(aligned_plots(report, scores, out))
    if explain:
        from .explain_page import explain_errors

        t = time.perf_counter()
        paths = [p for p, ok in zip(ids.paths, emb.ok, strict=True) if ok]
        page = explain_errors(
            matcher, paths, y, ids.identities, x, scores.impostor, out, n=explain, detect=detect, target_fmr=target_fmr
        )
        report = dataclasses.replace(report, explanations=page)
        report.seconds["explain"] = round(time.perf_counter() - t, 3)
    report.seconds["total"] = round(time.perf_counter() - t0, 3)
    write_report(report, out)
    return report


# ---- pairs -------------------------------------------------------------------------------


def pair_similarities(matcher: Any, a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Similarity of each pair ``(a[k], b[k])``: ``FaceMatcher.similarity``, what ``verify`` decides on.

    The protocol then accepts a pair at threshold ``t`` when its similarity is ``>= t``, the
    SDK's decision rule. Pairs that are not ``valid`` (an image gave no embedding) get
    :data:`~.protocols.FAILED_SCORE`, below any cosine.
    """
    out = np.full(len(valid), P.FAILED_SCORE, np.float64)
    for k in np.flatnonzero(valid):
        out[k] = matcher.similarity(a[k], b[k])
    return out


def run_pairs(
    matcher: Any,
    pairs_file: Path,
    out: Path,
    *,
    root: Path | None = None,
    detect: bool = True,
    cache_dir: Path | None = None,
    fmrs: Sequence[float] = P.DEFAULT_FMRS,
    seed: int = 0,
    plots: bool = True,
    progress: bool = True,
    erc: bool = True,
    mirror: bool = False,
    pose106: bool = False,
) -> PairsReport:
    """Verify a list of pairs; images without a face are reported and their pairs counted apart.

    ``erc``: face quality's error-versus-reject curves over the images of the genuine pairs with
    faces (at the FMR-1e-3 threshold: the pairs' own when their impostors resolve it, else the card's).
    """
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
    scores = pair_similarities(matcher, emb.vectors[ia], emb.vectors[ib], valid)
    model = model_info(matcher)
    res = P.pairs_protocol(
        scores, pl.same, valid, pl.folds, fmrs=fmrs, seed=seed, card_thresholds=model.card_thresholds
    )
    failed = [(str(pl.a[k]), str(pl.b[k]), bool(pl.same[k])) for k in np.flatnonzero(~valid)]
    section = None
    genuine = valid & pl.same
    if erc and genuine.any():
        from .erc import GenuinePairs
        from .quality import assess_set, erc_section

        quals = assess_set(matcher, emb, detect=detect, mirror=mirror, pose106=pose106)
        used = np.unique(np.concatenate([ia[genuine], ib[genuine]]))
        position = {int(u): k for k, u in enumerate(used)}
        pairs = GenuinePairs.from_pairs(
            np.array([position[int(v)] for v in ia[genuine]]),
            np.array([position[int(v)] for v in ib[genuine]]),
            scores[genuine],
            len(used),
        )
        impostor = scores[valid & ~pl.same]
        kept = [quals[int(u)] for u in used]
        section = erc_section(
            matcher.embedder_card,
            [q for q in kept if q is not None],
            pairs,
            impostor if impostor.size else None,
            labels=None,
            set_name=Path(pairs_file).resolve().parent.name,
            mirror=mirror,
            pose106=pose106,
            seed=seed,
        )
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
        erc=section,
    )
    out.mkdir(parents=True, exist_ok=True)
    names_root = Path(root) if root is not None else Path(pairs_file).parent
    write_pairs_csv(out / PAIRS_CSV, pl.a, pl.b, pl.same, scores, valid, emb.failures, res, root=names_root)
    report.files["pairs_csv"] = PAIRS_CSV
    if plots:
        report.files.update(pairs_plots(report, M.PairScores(scores[valid & pl.same], scores[valid & ~pl.same]), out))
    write_report(report, out)
    return report


__all__ = [
    "AlignedReport",
    "ModelInfo",
    "PairsReport",
    "embed_identity_set",
    "model_info",
    "pair_similarities",
    "run_aligned",
    "run_pairs",
]
