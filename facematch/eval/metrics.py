"""Biometric accuracy metrics as pure, vectorised numpy functions.

Conventions: a *score* is a cosine similarity (higher = more alike) and a comparison
is accepted when ``score >= threshold`` (ties count as matches, the conservative
choice for false matches). FMR (false-match rate) is the share of impostor comparisons
accepted, FNMR (false non-match rate) the share of genuine comparisons rejected, and
TAR = 1 - FNMR (FAR, the older name of FMR, is not used). A rate finer than
``1 / (number of trials)`` cannot be measured and is reported as not resolvable rather
than extrapolated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..calibration import thresholds_at_fmr
from ..errors import InvalidArgumentError

# ---- score sets --------------------------------------------------------------------------


def _scores(x: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise InvalidArgumentError(f"{name} scores must be finite")
    return arr


def _both(
    genuine: np.ndarray | Sequence[float], impostor: np.ndarray | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    g, i = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    if g.size == 0 or i.size == 0:
        raise InvalidArgumentError(f"need genuine and impostor scores, got {g.size} genuine and {i.size} impostor")
    return g, i


@dataclass(frozen=True)
class PairScores:
    """Similarity scores of all image pairs of a labelled set, split into genuine and impostor.

    ``genuine_group`` / ``impostor_group`` hold, per pair, the group index shared by
    both images, or -1 when the two images belong to different groups (only filled
    when groups were given).
    """

    genuine: np.ndarray
    impostor: np.ndarray
    genuine_group: np.ndarray | None = None
    impostor_group: np.ndarray | None = None


def all_pair_scores(
    embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, block: int = 1024
) -> PairScores:
    """Cosine scores of every unordered pair ``i < j`` of unit-norm ``embeddings`` (N, D).

    ``labels`` (N,) are identity indices; ``groups`` (N,) optional group indices. The
    work is done in row blocks so memory stays O(block × N) besides the output.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels).reshape(-1)
    n = emb.shape[0]
    if emb.ndim != 2 or lab.shape[0] != n:
        raise InvalidArgumentError(f"embeddings (N, D) and labels (N,) disagree: {emb.shape} vs {lab.shape}")
    grp = None if groups is None else np.asarray(groups, dtype=np.int64).reshape(-1)
    if grp is not None and grp.shape[0] != n:
        raise InvalidArgumentError(f"groups (N,) disagree with embeddings: {grp.shape} vs {emb.shape}")
    gen, imp, ggen, gimp = [], [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = emb[start:stop] @ emb.T  # (b, N)
        rows, cols = np.triu_indices(stop - start, k=1, m=n - start)
        cols = cols + start
        rows_abs = rows + start
        s = sims[rows, cols].astype(np.float64)
        same = lab[rows_abs] == lab[cols]
        gen.append(s[same])
        imp.append(s[~same])
        if grp is not None:
            pg = np.where(grp[rows_abs] == grp[cols], grp[rows_abs], -1)
            ggen.append(pg[same])
            gimp.append(pg[~same])
    cat = np.concatenate
    empty = np.zeros((0,), np.float64)
    return PairScores(
        genuine=np.clip(cat(gen), -1.0, 1.0) if gen else empty,
        impostor=np.clip(cat(imp), -1.0, 1.0) if imp else empty,
        genuine_group=None if grp is None else (cat(ggen) if ggen else np.zeros((0,), np.int64)),
        impostor_group=None if grp is None else (cat(gimp) if gimp else np.zeros((0,), np.int64)),
    )


# ---- ROC, AUC, EER --------------------------------------------------------------------------


@dataclass(frozen=True)
class Roc:
    """A ROC curve: at ``thresholds[k]``, ``fmr[k]`` of impostors and ``tar[k]`` of genuines pass.

    Thresholds decrease from +inf (nothing accepted: FMR = TAR = 0) to the lowest score
    (everything accepted: FMR = TAR = 1), one point per distinct score.
    """

    fmr: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray
    n_genuine: int
    n_impostor: int

    @property
    def fnmr(self) -> np.ndarray:
        return 1.0 - self.tar


def roc(genuine: np.ndarray | Sequence[float], impostor: np.ndarray | Sequence[float]) -> Roc:
    """The full ROC curve of genuine vs impostor scores (ties handled exactly)."""
    g, i = _both(genuine, impostor)
    scores = np.concatenate([g, i])
    is_gen = np.concatenate([np.ones(g.size, bool), np.zeros(i.size, bool)])
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tp = np.cumsum(is_gen[order])
    fp = np.arange(1, s.size + 1) - tp
    # last index of each run of equal scores: accepting a score accepts all its ties
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tar = np.r_[0.0, tp[last] / g.size]
    fmr = np.r_[0.0, fp[last] / i.size]
    thr = np.r_[np.inf, s[last]]
    return Roc(fmr=fmr, tar=tar, thresholds=thr, n_genuine=int(g.size), n_impostor=int(i.size))


def auc(curve: Roc) -> float:
    """Area under the ROC curve (trapezoids; equals the Mann-Whitney probability, ties counted half)."""
    return float(np.sum(np.diff(curve.fmr) * (curve.tar[1:] + curve.tar[:-1]) / 2.0))


@dataclass(frozen=True)
class Eer:
    """Equal error rate: where FMR equals FNMR on the (linearly interpolated) ROC."""

    eer: float
    threshold: float


def eer(curve: Roc) -> Eer:
    """The equal error rate of a ROC curve and the similarity threshold there."""
    d = (1.0 - curve.tar) - curve.fmr  # FNMR - FMR: 1 at threshold +inf, decreasing to -1
    k = int(np.argmax(d <= 0.0))
    thr_k = float(curve.thresholds[k])
    if d[k] == 0.0 or k == 0:
        return Eer(eer=float(curve.fmr[k]), threshold=thr_k)
    t = d[k - 1] / (d[k - 1] - d[k])
    rate = float(curve.fmr[k - 1] + t * (curve.fmr[k] - curve.fmr[k - 1]))
    prev = float(curve.thresholds[k - 1])
    thr = thr_k if not math.isfinite(prev) else prev + t * (thr_k - prev)
    return Eer(eer=rate, threshold=float(thr))


# ---- operating points -------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """TAR at a target FMR, with the threshold and what was actually observed there.

    ``resolvable`` is False when the target is finer than ``1 / n_impostor``; then
    ``threshold``, ``tar`` and ``observed_fmr`` are None.
    """

    target_fmr: float
    resolvable: bool
    threshold: float | None
    tar: float | None
    fnmr: float | None
    observed_fmr: float | None
    n_genuine: int
    n_impostor: int
    fmr_floor: float


def tar_at_fmr(
    genuine: np.ndarray | Sequence[float], impostor: np.ndarray | Sequence[float], fmrs: Sequence[float]
) -> list[OperatingPoint]:
    """TAR at each target FMR, never reporting an FMR finer than ``1 / n_impostor``."""
    g, i = _both(genuine, impostor)
    thr = thresholds_at_fmr(i, fmrs)
    out = []
    for f, t in zip(fmrs, thr, strict=True):
        if not np.isfinite(t):
            out.append(OperatingPoint(float(f), False, None, None, None, None, g.size, i.size, 1.0 / i.size))
            continue
        tar = float(np.mean(g >= t))
        out.append(
            OperatingPoint(
                target_fmr=float(f),
                resolvable=True,
                threshold=float(t),
                tar=tar,
                fnmr=1.0 - tar,
                observed_fmr=float(np.mean(i >= t)),
                n_genuine=int(g.size),
                n_impostor=int(i.size),
                fmr_floor=1.0 / i.size,
            )
        )
    return out


def rates_at_threshold(
    genuine: np.ndarray | Sequence[float], impostor: np.ndarray | Sequence[float], threshold: float
) -> tuple[float | None, float | None]:
    """(FNMR, FMR) at a fixed threshold; None for an empty score set."""
    g = _scores(genuine, "genuine")
    i = _scores(impostor, "impostor")
    fnmr = float(np.mean(g < threshold)) if g.size else None
    fmr = float(np.mean(i >= threshold)) if i.size else None
    return fnmr, fmr


# ---- identification -----------------------------------------------------------------------


def max_by_identity(scores: np.ndarray, column_identity: np.ndarray, n_identities: int) -> np.ndarray:
    """(P, T) template scores → (P, n_identities) best score per identity (-inf where none)."""
    s = np.asarray(scores, dtype=np.float64)
    ident = np.asarray(column_identity, dtype=np.int64).reshape(-1)
    out = np.full((s.shape[0], n_identities), -np.inf)
    if s.size:
        np.maximum.at(out.T, ident, s.T)
    return out


def cmc(scores: np.ndarray, true_index: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Closed-set rank-k identification rates.

    ``scores`` (P, G): each probe against each gallery identity; ``true_index`` (P,):
    the probe's identity column. A probe's rank is 1 + the number of *other*
    identities scoring at least as high (ties count against the probe).
    """
    rank = _ranks(scores, true_index)
    return {int(k): float(np.mean(rank <= k)) for k in ks}


def cmc_curve(scores: np.ndarray, true_index: np.ndarray, max_rank: int | None = None) -> list[float]:
    """The CMC curve: rank-k identification rate for k = 1 .. ``max_rank`` (default: the gallery size).

    Ranks as in :func:`cmc`, so ``cmc_curve(s, t)[k - 1] == cmc(s, t, [k])[k]``.
    """
    rank = _ranks(scores, true_index)
    n_gallery = np.asarray(scores).shape[1]
    top = n_gallery if max_rank is None else max(1, min(int(max_rank), n_gallery))
    counts = np.bincount(np.minimum(rank, top + 1), minlength=top + 2)[1 : top + 1]
    return [float(v) for v in np.cumsum(counts) / rank.size]


def _ranks(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(true_index, dtype=np.int64).reshape(-1)
    if s.ndim != 2 or s.shape[0] != t.size:
        raise InvalidArgumentError(f"scores (P, G) and true_index (P,) disagree: {s.shape} vs {t.shape}")
    if t.size == 0:
        raise InvalidArgumentError("need at least one probe")
    true_s = s[np.arange(t.size), t]
    return np.sum(s >= true_s[:, None], axis=1)  # includes the true identity itself


@dataclass(frozen=True)
class DirPoint:
    """Open-set detection-and-identification rate at a target false-positive identification rate."""

    target_fpir: float
    resolvable: bool
    threshold: float | None
    dir: float | None
    observed_fpir: float | None
    n_mated: int
    n_nonmated: int
    fpir_floor: float


def dir_at_fpir(
    mated_top_score: np.ndarray,
    mated_correct: np.ndarray,
    nonmated_top_score: np.ndarray,
    fpirs: Sequence[float],
) -> list[DirPoint]:
    """DIR at each target FPIR.

    ``mated_top_score``/``mated_correct``: best gallery score of each mated probe and
    whether that best identity is the right one; ``nonmated_top_score``: best gallery
    score of each probe whose identity is not enrolled. The threshold for FPIR ``f`` is
    the smallest ``t`` with ``mean(nonmated >= t) <= f``; DIR is the share of mated
    probes that are ranked first *and* reach ``t``.
    """
    ms = _scores(mated_top_score, "mated")
    mc = np.asarray(mated_correct, dtype=bool).reshape(-1)
    ns = _scores(nonmated_top_score, "non-mated")
    if ms.size != mc.size:
        raise InvalidArgumentError("mated_top_score and mated_correct disagree in length")
    if ms.size == 0 or ns.size == 0:
        raise InvalidArgumentError(f"need mated and non-mated probes, got {ms.size} and {ns.size}")
    thr = thresholds_at_fmr(ns, fpirs)
    out = []
    for f, t in zip(fpirs, thr, strict=True):
        if not np.isfinite(t):
            out.append(DirPoint(float(f), False, None, None, None, ms.size, ns.size, 1.0 / ns.size))
            continue
        out.append(
            DirPoint(
                target_fpir=float(f),
                resolvable=True,
                threshold=float(t),
                dir=float(np.mean(mc & (ms >= t))),
                observed_fpir=float(np.mean(ns >= t)),
                n_mated=int(ms.size),
                n_nonmated=int(ns.size),
                fpir_floor=1.0 / ns.size,
            )
        )
    return out


@dataclass(frozen=True)
class DirCurve:
    """DIR against FPIR as the threshold sweeps the non-mated probes' top scores (for the DIR vs FPIR plot).

    ``threshold[k]`` gives ``fpir[k]`` (share of non-mated probes reaching it) and ``dir[k]``
    (share of mated probes ranked first and reaching it); FPIR decreases along the arrays.
    """

    fpir: list[float]
    dir: list[float]
    threshold: list[float]
    n_mated: int
    n_nonmated: int


def dir_fpir_curve(
    mated_top_score: np.ndarray,
    mated_correct: np.ndarray,
    nonmated_top_score: np.ndarray,
    max_points: int = 256,
) -> DirCurve:
    """The DIR vs FPIR curve, one point per distinct non-mated top score (thinned, log-spaced in FPIR).

    Each point is what :func:`dir_at_fpir` reports at that threshold.
    """
    ms = _scores(mated_top_score, "mated")
    mc = np.asarray(mated_correct, dtype=bool).reshape(-1)
    ns = np.sort(_scores(nonmated_top_score, "non-mated"))
    if ms.size != mc.size or ms.size == 0 or ns.size == 0:
        raise InvalidArgumentError("need mated (with correctness) and non-mated probe scores")
    thr = np.unique(ns)[::-1]  # highest first: FPIR grows along the sweep
    fpir = (ns.size - np.searchsorted(ns, thr, side="left")) / ns.size
    hits = np.sort(ms[mc])
    dirs = (hits.size - np.searchsorted(hits, thr, side="left")) / ms.size
    if thr.size > max_points:
        grid = np.geomspace(fpir[0], fpir[-1], max_points)
        keep = np.unique(np.r_[0, np.searchsorted(fpir, grid, side="left").clip(0, thr.size - 1), thr.size - 1])
        thr, fpir, dirs = thr[keep], fpir[keep], dirs[keep]
    return DirCurve(
        fpir=[float(v) for v in fpir[::-1]],
        dir=[float(v) for v in dirs[::-1]],
        threshold=[float(v) for v in thr[::-1]],
        n_mated=int(ms.size),
        n_nonmated=int(ns.size),
    )


# ---- fairness ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRates:
    """Error rates of one group: at the shared threshold, and the group's own threshold at the target FMR."""

    group: str
    n_genuine: int
    n_impostor: int
    fnmr: float | None
    fmr: float | None
    own_threshold: float | None  # None: target FMR finer than 1 / n_impostor of this group
    own_fnmr: float | None


@dataclass(frozen=True)
class Fairness:
    """Per-group error rates and their spread (max/min ratio; None when the minimum is 0)."""

    shared_threshold: float
    target_fmr: float
    groups: list[GroupRates]
    fnmr_ratio: float | None
    fmr_ratio: float | None
    fnmr_gap: float | None
    fmr_gap: float | None
    own_threshold_gap: float | None
    cross_group_impostors: int
    cross_group_fmr: float | None


def _ratio(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None, None
    hi, lo = max(vals), min(vals)
    return (hi / lo if lo > 0 else None), hi - lo


def fairness(
    scores: PairScores, group_names: Sequence[str], shared_threshold: float, target_fmr: float = 1e-3
) -> Fairness:
    """Per-group FNMR/FMR at one shared threshold, each group's own threshold, and spreads.

    Genuine and impostor pairs count toward a group when both images belong to it
    (the usual demographic protocol: cross-group impostors are rarely confused and
    would flatter every group); cross-group impostors are reported on their own.
    """
    if scores.genuine_group is None or scores.impostor_group is None:
        raise InvalidArgumentError("pair scores were computed without groups")
    rows = []
    for gi, name in enumerate(group_names):
        g = scores.genuine[scores.genuine_group == gi]
        i = scores.impostor[scores.impostor_group == gi]
        fnmr, fmr = rates_at_threshold(g, i, shared_threshold)
        own_t: float | None = None
        own_fnmr: float | None = None
        if i.size:
            t = float(thresholds_at_fmr(i, [target_fmr])[0])
            if math.isfinite(t):
                own_t = t
                own_fnmr = float(np.mean(g < t)) if g.size else None
        rows.append(GroupRates(str(name), int(g.size), int(i.size), fnmr, fmr, own_t, own_fnmr))
    fnmr_ratio, fnmr_gap = _ratio([r.fnmr for r in rows])
    fmr_ratio, fmr_gap = _ratio([r.fmr for r in rows])
    owns = [r.own_threshold for r in rows if r.own_threshold is not None]
    cross = scores.impostor[scores.impostor_group == -1]
    return Fairness(
        shared_threshold=float(shared_threshold),
        target_fmr=float(target_fmr),
        groups=rows,
        fnmr_ratio=fnmr_ratio,
        fmr_ratio=fmr_ratio,
        fnmr_gap=fnmr_gap,
        fmr_gap=fmr_gap,
        own_threshold_gap=(max(owns) - min(owns)) if len(owns) >= 2 else None,
        cross_group_impostors=int(cross.size),
        cross_group_fmr=float(np.mean(cross >= shared_threshold)) if cross.size else None,
    )


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (treats trials as independent).

    ``(0, 1)`` for no trials. The bounds are the closed form's; with no successes the
    lower bound is exactly 0, and with no failures the upper bound exactly 1 (the closed
    form's rounding would otherwise put them a few ulps to the wrong side of the estimate).
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise InvalidArgumentError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


# ---- hypersphere health ----------------------------------------------------------------------


def alignment(genuine: np.ndarray | Sequence[float], alpha: float = 2.0) -> float:
    """Wang & Isola alignment: ``E ||f(x) - f(y)||^alpha`` over positive pairs of unit vectors.

    Computed from cosine scores, since ``||a - b||^2 = 2 - 2 cos`` on the unit sphere.
    Lower is better (0 = every class collapsed to a point).
    """
    g = _scores(genuine, "genuine")
    if g.size == 0:
        raise InvalidArgumentError("alignment needs at least one genuine pair")
    sq = np.clip(2.0 - 2.0 * g, 0.0, 4.0)
    return float(np.mean(sq ** (alpha / 2.0)))


def uniformity(pair_scores: np.ndarray | Sequence[float], t: float = 2.0) -> float:
    """Wang & Isola uniformity: ``log E exp(-t ||f(x) - f(y)||^2)`` over all distinct pairs.

    Lower is better (more uniform on the sphere); computed stably via log-sum-exp.
    """
    s = _scores(pair_scores, "pair")
    if s.size == 0:
        raise InvalidArgumentError("uniformity needs at least one pair")
    x = -t * np.clip(2.0 - 2.0 * s, 0.0, 4.0)
    m = float(np.max(x))
    return float(m + math.log(float(np.mean(np.exp(x - m)))))


@dataclass(frozen=True)
class AngleStats:
    """Intra- vs inter-class angles (degrees) on the unit sphere.

    The open-set criterion of SphereFace asks the largest intra-class angle to be
    smaller than the smallest inter-class angle. Extremes are dominated by outliers and
    label noise, so the per-class share meeting it and robust quantiles come with them.
    """

    max_intra_deg: float
    min_inter_deg: float
    criterion_met: bool
    intra_p99_deg: float
    inter_p01_deg: float
    mean_intra_deg: float
    mean_inter_deg: float
    classes_meeting_criterion: int
    n_classes: int


def _deg(cos: np.ndarray | float) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)))


def angle_stats(scores: PairScores, embeddings: np.ndarray, labels: np.ndarray) -> AngleStats:
    """Angle statistics from pair scores plus a per-class check of the criterion.

    A class meets the criterion when its largest intra-class angle is smaller than the
    smallest angle between any of its samples and any sample of another class.
    """
    if scores.genuine.size == 0 or scores.impostor.size == 0:
        raise InvalidArgumentError("angle statistics need genuine and impostor pairs")
    emb = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels).reshape(-1)
    classes = np.unique(lab)
    met = 0
    counted = 0
    for c in classes:
        members = lab == c
        if members.sum() < 2:
            continue
        sims = emb[members] @ emb.T  # (n_c, N)
        intra = sims[:, members]
        n_c = intra.shape[0]
        min_intra = float(np.min(intra + 3.0 * np.eye(n_c)))  # ignore self-similarity
        max_inter = float(np.max(sims[:, ~members])) if (~members).any() else -1.0
        counted += 1
        met += int(min_intra > max_inter)
    min_gen = float(np.min(scores.genuine))
    max_imp = float(np.max(scores.impostor))
    return AngleStats(
        max_intra_deg=float(_deg(min_gen)),
        min_inter_deg=float(_deg(max_imp)),
        criterion_met=bool(min_gen > max_imp),
        intra_p99_deg=float(np.percentile(_deg(scores.genuine), 99)),
        inter_p01_deg=float(np.percentile(_deg(scores.impostor), 1)),
        mean_intra_deg=float(np.mean(_deg(scores.genuine))),
        mean_inter_deg=float(np.mean(_deg(scores.impostor))),
        classes_meeting_criterion=met,
        n_classes=counted,
    )


# ---- 10-fold verification protocol ---------------------------------------------------------


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising accuracy on labelled pairs (midway between adjacent distinct scores)."""
    s = _scores(scores, "pair")
    y = np.asarray(same, dtype=bool).reshape(-1)
    if s.size == 0 or s.size != y.size:
        raise InvalidArgumentError("scores and labels must be non-empty and of equal length")
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each distinct score
    neg_below = np.r_[0, np.cumsum(~y)][first]  # negatives strictly below each candidate
    pos_at_or_above = y.sum() - np.r_[0, np.cumsum(y)][first]
    acc = np.r_[neg_below + pos_at_or_above, (~y).sum()]  # last: threshold above everything
    k = int(np.argmax(acc))
    if k == first.size:
        return float(np.nextafter(s[-1], np.inf))
    if k == 0:
        return float(s[0])
    return float((s[first[k] - 1] + s[first[k]]) / 2.0)


@dataclass(frozen=True)
class KFold:
    """k-fold verification accuracy: threshold chosen on k-1 folds, accuracy on the held-out one."""

    mean_accuracy: float
    std_accuracy: float
    fold_accuracy: list[float]
    fold_threshold: list[float]
    fold_sizes: list[int]


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> KFold:
    """Accuracy under a given fold assignment (LFW protocol: 10 folds)."""
    s = _scores(scores, "pair")
    y = np.asarray(same, dtype=bool).reshape(-1)
    f = np.asarray(folds, dtype=np.int64).reshape(-1)
    if not (s.size == y.size == f.size) or s.size == 0:
        raise InvalidArgumentError("scores, labels and folds must be non-empty and of equal length")
    ids = np.unique(f)
    if ids.size < 2:
        raise InvalidArgumentError("the k-fold protocol needs at least 2 folds")
    accs, thrs, sizes = [], [], []
    for k in ids:
        test = f == k
        t = best_threshold(s[~test], y[~test])
        accs.append(float(np.mean((s[test] >= t) == y[test])))
        thrs.append(t)
        sizes.append(int(test.sum()))
    return KFold(float(np.mean(accs)), float(np.std(accs)), accs, thrs, sizes)


def assign_folds(n: int, k: int = 10, seed: int = 0) -> np.ndarray:
    """Balanced fold index per item after a seeded shuffle (sizes differ by at most one)."""
    if n <= 0 or k <= 0:
        raise InvalidArgumentError("assign_folds needs n > 0 and k > 0")
    out = np.empty(n, np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % min(k, n)
    return out


__all__ = [
    "AngleStats",
    "DirCurve",
    "DirPoint",
    "Eer",
    "Fairness",
    "GroupRates",
    "KFold",
    "OperatingPoint",
    "PairScores",
    "Roc",
    "alignment",
    "all_pair_scores",
    "angle_stats",
    "assign_folds",
    "auc",
    "best_threshold",
    "cmc",
    "cmc_curve",
    "dir_at_fpir",
    "dir_fpir_curve",
    "eer",
    "fairness",
    "kfold_accuracy",
    "max_by_identity",
    "rates_at_threshold",
    "roc",
    "tar_at_fmr",
    "uniformity",
    "wilson_interval",
]
