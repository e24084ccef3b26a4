"""Evaluation protocols on embeddings: verification, identification, fairness, hypersphere health.

These work on arrays only (embeddings, labels, groups), so they can be tested with
synthetic data and reused for any model. The CLI glues them to images and models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..calibration import thresholds_at_fmr
from ..errors import InvalidArgumentError
from . import metrics as M

DEFAULT_FMRS = (1e-2, 1e-3, 1e-4)
DEFAULT_FPIRS = (1e-1, 1e-2)
CMC_RANKS = 50  # the CMC curve is kept up to this rank


@dataclass(frozen=True)
class CardPoint:
    """How a model card's calibrated threshold behaves on this evaluation set.

    TAR at a fixed threshold is always measurable; the observed FMR is only meaningful
    when the card's FMR is at least ``1 / n_impostor`` (``fmr_resolvable``).
    """

    card_fmr: str
    threshold: float
    observed_fmr: float
    tar: float
    n_impostor: int
    fmr_resolvable: bool

    def observed_fmr_text(self, digits: int = 2) -> str:
        """The observed FMR for a report, or why it cannot be read off this set."""
        if self.fmr_resolvable:
            return f"{self.observed_fmr:.{digits}e}"
        return f"n/a (< 1/{self.n_impostor} impostor pairs)"


@dataclass(frozen=True)
class Verification:
    """1:1 verification over every pair of a labelled set."""

    n_genuine: int
    n_impostor: int
    fmr_floor: float
    auc: float
    eer: float
    eer_threshold: float
    operating_points: list[M.OperatingPoint]
    card_points: list[CardPoint]


def verification(
    scores: M.PairScores, fmrs: Sequence[float] = DEFAULT_FMRS, card_thresholds: dict[str, float] | None = None
) -> Verification:
    """ROC, AUC, EER and TAR at each FMR (floored at 1/impostors), plus the card's thresholds checked."""
    curve = M.roc(scores.genuine, scores.impostor)
    e = M.eer(curve)
    fmr_floor = 1.0 / curve.n_impostor
    card_points = []
    cards = sorted((card_thresholds or {}).items(), key=lambda kv: -float(kv[0]))
    # a card FMR is observable here exactly when this set has a threshold at it
    observable = np.isfinite(thresholds_at_fmr(scores.impostor, [float(k) for k, _ in cards])) if cards else []
    for (key, thr), resolvable in zip(cards, observable, strict=True):
        fnmr, fmr = M.rates_at_threshold(scores.genuine, scores.impostor, thr)
        assert fnmr is not None and fmr is not None
        card_points.append(CardPoint(key, float(thr), fmr, 1.0 - fnmr, curve.n_impostor, bool(resolvable)))
    return Verification(
        n_genuine=curve.n_genuine,
        n_impostor=curve.n_impostor,
        fmr_floor=fmr_floor,
        auc=M.auc(curve),
        eer=e.eer,
        eer_threshold=e.threshold,
        operating_points=M.tar_at_fmr(scores.genuine, scores.impostor, fmrs),
        card_points=card_points,
    )


@dataclass(frozen=True)
class ClosedSet:
    """Closed-set identification: every probe's identity is in the gallery."""

    n_gallery_identities: int
    n_gallery_images: int
    n_probes: int
    rank: dict[int, float]
    cmc: list[float] = field(default_factory=list)  # rank-k identification rate, k = 1 .. min(gallery, CMC_RANKS)


@dataclass(frozen=True)
class OpenSet:
    """Open-set identification with identities held out of the gallery, pooled over folds.

    In each fold one part of the identities is held out: its images are non-mated
    probes; the enrolled identities' non-gallery images are mated probes.
    """

    n_folds: int
    gallery_identities_per_fold: list[int]
    n_mated: int
    n_nonmated: int
    points: list[M.DirPoint]
    curve: M.DirCurve | None = None  # DIR vs FPIR over all thresholds (pooled folds)


@dataclass(frozen=True)
class Identification:
    gallery_per_identity: int
    seed: int
    closed_set: ClosedSet
    open_set: OpenSet | None


def split_gallery(labels: np.ndarray, per_identity: int = 1, seed: int = 0) -> np.ndarray:
    """Boolean gallery mask: ``per_identity`` seeded-random images of each identity."""
    if per_identity < 1:
        raise InvalidArgumentError("gallery_per_identity must be at least 1")
    lab = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    mask = np.zeros(lab.size, bool)
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        mask[rng.permutation(idx)[: min(per_identity, idx.size)]] = True
    return mask


def _probe_vs_gallery(
    emb: np.ndarray, lab: np.ndarray, probes: np.ndarray, gallery: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(P, G_ids) best score per gallery identity, and the gallery identity labels (columns)."""
    g_lab = lab[gallery]
    ids, col = np.unique(g_lab, return_inverse=True)
    sims = emb[probes] @ emb[gallery].T
    return M.max_by_identity(sims, col, ids.size), ids


def identification(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5),
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    gallery_per_identity: int = 1,
    holdout_fraction: float = 0.5,
    seed: int = 0,
) -> Identification:
    """Closed-set rank-k and open-set DIR@FPIR from a labelled embedding set."""
    emb = np.asarray(embeddings, np.float32)
    lab = np.asarray(labels, np.int64)
    gallery = split_gallery(lab, gallery_per_identity, seed)
    probes = ~gallery
    if not probes.any():
        raise InvalidArgumentError("identification needs identities with more images than gallery_per_identity")
    scores, ids = _probe_vs_gallery(emb, lab, probes, gallery)
    true_col = np.searchsorted(ids, lab[probes])
    closed = ClosedSet(
        n_gallery_identities=int(ids.size),
        n_gallery_images=int(gallery.sum()),
        n_probes=int(probes.sum()),
        rank=M.cmc(scores, true_col, ks),
        cmc=M.cmc_curve(scores, true_col, CMC_RANKS),
    )
    return Identification(
        gallery_per_identity, seed, closed, _open_set(emb, lab, gallery, fpirs, holdout_fraction, seed)
    )


def _open_set(
    emb: np.ndarray, lab: np.ndarray, gallery: np.ndarray, fpirs: Sequence[float], holdout: float, seed: int
) -> OpenSet | None:
    if not (0.0 < holdout < 1.0):
        raise InvalidArgumentError(f"holdout_fraction must be in (0, 1), got {holdout}")
    classes = np.unique(lab)
    n_folds = max(2, int(round(1.0 / holdout)))
    if classes.size < n_folds + 1:
        return None
    parts = np.array_split(np.random.default_rng(seed + 1).permutation(classes), n_folds)
    m_scores, m_correct, n_scores, sizes = [], [], [], []
    for held in parts:
        held_mask = np.isin(lab, held)
        fold_gallery = gallery & ~held_mask
        mated = ~gallery & ~held_mask
        if not mated.any() or not fold_gallery.any():
            continue
        s_m, ids = _probe_vs_gallery(emb, lab, mated, fold_gallery)
        best = np.argmax(s_m, axis=1)
        m_scores.append(s_m[np.arange(best.size), best])
        m_correct.append(ids[best] == lab[mated])
        s_n, _ = _probe_vs_gallery(emb, lab, held_mask, fold_gallery)
        n_scores.append(s_n.max(axis=1))
        sizes.append(int(ids.size))
    if not m_scores:
        return None
    ms, mc, ns = np.concatenate(m_scores), np.concatenate(m_correct), np.concatenate(n_scores)
    return OpenSet(
        n_folds=len(sizes),
        gallery_identities_per_fold=sizes,
        n_mated=int(ms.size),
        n_nonmated=int(ns.size),
        points=M.dir_at_fpir(ms, mc, ns, fpirs),
        curve=M.dir_fpir_curve(ms, mc, ns),
    )


@dataclass(frozen=True)
class NormStats:
    """Pre-normalisation feature norms (a quality signal in ArcFace-family models)."""

    mean: float
    std: float
    p05: float
    p50: float
    p95: float
    n: int


@dataclass(frozen=True)
class Hypersphere:
    """Health of the embedding geometry on the unit sphere."""

    alignment: float
    uniformity: float
    uniformity_t: float
    angles: M.AngleStats
    feature_norm: NormStats | None
    feature_norm_note: str


def hypersphere(
    scores: M.PairScores,
    embeddings: np.ndarray,
    labels: np.ndarray,
    norms: np.ndarray | None,
    norm_note: str = "",
    t: float = 2.0,
) -> Hypersphere:
    """Alignment/uniformity (Wang & Isola), intra/inter angles (SphereFace), feature norms."""
    all_scores = np.concatenate([scores.genuine, scores.impostor])
    ns = None
    if norms is not None:
        n = np.asarray(norms, np.float64)
        n = n[np.isfinite(n)]
        if n.size:
            q = np.percentile(n, [5, 50, 95])
            ns = NormStats(float(n.mean()), float(n.std()), float(q[0]), float(q[1]), float(q[2]), int(n.size))
    return Hypersphere(
        alignment=M.alignment(scores.genuine),
        uniformity=M.uniformity(all_scores, t),
        uniformity_t=t,
        angles=M.angle_stats(scores, embeddings, labels),
        feature_norm=ns,
        feature_norm_note=norm_note,
    )


@dataclass(frozen=True)
class PairsResult:
    """Verification on a given list of pairs (LFW-style)."""

    n_pairs: int
    n_genuine: int
    n_impostor: int
    n_failed_pairs: int
    accuracy: M.KFold
    accuracy_failures_as_nonmatch: M.KFold | None
    fold_source: str
    auc: float
    eer: float
    eer_threshold: float
    operating_points: list[M.OperatingPoint]
    card_points: list[CardPoint]


FAILED_SCORE = -2.0  # below any cosine: a pair with a failed image is always rejected


def pairs_protocol(
    scores: np.ndarray,
    same: np.ndarray,
    valid: np.ndarray,
    folds: np.ndarray | None,
    *,
    fmrs: Sequence[float] = DEFAULT_FMRS,
    n_folds: int = 10,
    seed: int = 0,
    card_thresholds: dict[str, float] | None = None,
) -> PairsResult:
    """10-fold accuracy, AUC, EER and TAR@FMR on pairs; ``valid`` False marks pairs with a failed image."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(same, bool)
    v = np.asarray(valid, bool)
    if not (s.size == y.size == v.size):
        raise InvalidArgumentError("scores, same and valid must have equal lengths")
    if int(y[v].sum()) == 0 or int((~y[v]).sum()) == 0:
        raise InvalidArgumentError(
            f"need genuine and impostor pairs with faces, got {int(y[v].sum())} and {int((~y[v]).sum())}"
        )
    source = "file" if folds is not None else f"seeded ({n_folds} balanced folds, seed {seed})"
    f = np.asarray(folds, np.int64) if folds is not None else M.assign_folds(s.size, n_folds, seed)
    acc = M.kfold_accuracy(s[v], y[v], f[v])
    acc_all = None
    if not v.all():
        acc_all = M.kfold_accuracy(np.where(v, s, FAILED_SCORE), y, f)
    ver = verification(M.PairScores(genuine=s[v & y], impostor=s[v & ~y]), fmrs, card_thresholds)
    return PairsResult(
        n_pairs=int(s.size),
        n_genuine=int((v & y).sum()),
        n_impostor=int((v & ~y).sum()),
        n_failed_pairs=int((~v).sum()),
        accuracy=acc,
        accuracy_failures_as_nonmatch=acc_all,
        fold_source=source,
        auc=ver.auc,
        eer=ver.eer,
        eer_threshold=ver.eer_threshold,
        operating_points=ver.operating_points,
        card_points=ver.card_points,
    )


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


__all__ = [
    "CMC_RANKS",
    "DEFAULT_FMRS",
    "DEFAULT_FPIRS",
    "CardPoint",
    "ClosedSet",
    "Hypersphere",
    "Identification",
    "NormStats",
    "OpenSet",
    "PairsResult",
    "Verification",
    "hypersphere",
    "identification",
    "pairs_protocol",
    "split_gallery",
    "verification",
]
