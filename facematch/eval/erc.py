"""Error-versus-reject characteristic (ERC) and the unified quality score's logistic fit, on arrays.

The ERC is how a quality measure is judged (NIST's face image quality evaluations, the FIQA
literature, ISO/IEC 29794-1): fix the similarity threshold (here: the one at a false-match
rate of 1e-3), reject the images with the lowest quality, and watch the false non-match rate
of the genuine comparisons that remain. A measure that predicts errors makes the FNMR fall
fast; random rejection leaves it where it was.

Conventions: *goodness* is a quality value oriented so that higher is better
(:func:`facematch.quality.goodness`); rejecting a share ``r`` of N images drops the
``round(r * N)`` images of lowest goodness (ties broken by position, stably); a genuine
comparison counts when both its images are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError

DEFAULT_REJECT = tuple(round(0.01 * k, 2) for k in range(31))  # 0 % ... 30 %


@dataclass(frozen=True)
class GenuinePairs:
    """The genuine comparisons of a labelled image set: image indices ``i < j`` and their similarity."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray
    n_images: int

    @classmethod
    def of(cls, embeddings: np.ndarray, labels: np.ndarray) -> GenuinePairs:
        """Every same-identity pair of unit ``embeddings`` (N, D) with identity ``labels`` (N,)."""
        emb = np.asarray(embeddings, np.float32)
        lab = np.asarray(labels).reshape(-1)
        if emb.ndim != 2 or emb.shape[0] != lab.size:
            raise InvalidArgumentError(f"embeddings (N, D) and labels (N,) disagree: {emb.shape} vs {lab.shape}")
        ii, jj = [], []
        for c in np.unique(lab):
            idx = np.flatnonzero(lab == c)
            a, b = np.triu_indices(idx.size, k=1)
            ii.append(idx[a])
            jj.append(idx[b])
        i = np.concatenate(ii) if ii else np.zeros(0, np.int64)
        j = np.concatenate(jj) if jj else np.zeros(0, np.int64)
        score = np.clip(np.einsum("nd,nd->n", emb[i], emb[j]).astype(np.float64), -1.0, 1.0)
        return cls(i.astype(np.int64), j.astype(np.int64), score, int(lab.size))

    @classmethod
    def from_pairs(cls, i: np.ndarray, j: np.ndarray, score: np.ndarray, n_images: int) -> GenuinePairs:
        i, j, s = (np.asarray(a).reshape(-1) for a in (i, j, score))
        if not (i.size == j.size == s.size):
            raise InvalidArgumentError("pair indices and scores must have equal lengths")
        return cls(i.astype(np.int64), j.astype(np.int64), s.astype(np.float64), int(n_images))

    def __len__(self) -> int:
        return int(self.score.size)


def kept_after_rejecting(goodness: np.ndarray, share: float, groups: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the images kept when the ``share`` of lowest ``goodness`` is rejected.

    With ``groups`` the share is rejected within each group (e.g. each cross-validation fold,
    whose images were scored by their own model).
    """
    g = np.asarray(goodness, np.float64).reshape(-1)
    if not np.all(np.isfinite(g)):
        raise InvalidArgumentError("quality values must be finite")
    if not 0.0 <= share < 1.0:
        raise InvalidArgumentError(f"a rejected share must be in [0, 1), got {share}")
    keep = np.ones(g.size, bool)
    if groups is None:
        keep[np.argsort(g, kind="stable")[: int(round(share * g.size))]] = False
        return keep
    grp = np.asarray(groups).reshape(-1)
    if grp.size != g.size:
        raise InvalidArgumentError(f"one group per image needed ({g.size}), got {grp.size}")
    for value in np.unique(grp):
        idx = np.flatnonzero(grp == value)
        keep[idx[np.argsort(g[idx], kind="stable")[: int(round(share * idx.size))]]] = False
    return keep


def erc(
    goodness: np.ndarray,
    pairs: GenuinePairs,
    threshold: float,
    reject: Sequence[float] = DEFAULT_REJECT,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """FNMR at ``threshold`` of the genuine pairs left after rejecting each share of ``reject``.

    ``groups``: reject the share within each group (see :func:`kept_after_rejecting`). NaN where
    no genuine pair is left.
    """
    g = np.asarray(goodness, np.float64).reshape(-1)
    if g.size != pairs.n_images:
        raise InvalidArgumentError(f"one quality value per image needed ({pairs.n_images}), got {g.size}")
    fails = pairs.score < threshold
    out = np.full(len(reject), np.nan)
    for k, share in enumerate(reject):
        keep = kept_after_rejecting(g, share, groups)
        both = keep[pairs.i] & keep[pairs.j]
        if both.any():
            out[k] = float(fails[both].mean())
    return out


def erc_random(
    pairs: GenuinePairs,
    threshold: float,
    reject: Sequence[float] = DEFAULT_REJECT,
    draws: int = 50,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """The ERC of random rejection: the mean over ``draws`` seeded random orders (the baseline)."""
    rng = np.random.default_rng(seed)
    curves = np.stack([erc(rng.random(pairs.n_images), pairs, threshold, reject, groups) for _ in range(draws)])
    seen = np.isfinite(curves)
    n = seen.sum(axis=0)
    total = np.where(seen, curves, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)  # NaN where no draw left a genuine pair


def area(reject: Sequence[float], fnmr: np.ndarray) -> float:
    """Area under an ERC over its rejected shares (trapezoids); lower is better."""
    x = np.asarray(reject, np.float64)
    y = np.asarray(fnmr, np.float64)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    x, y = x[ok], y[ok]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def fnmr_cut(curve: np.ndarray, reject: Sequence[float], share: float) -> float:
    """Relative FNMR reduction ``1 - FNMR(share) / FNMR(0)`` (``share`` must be on the grid)."""
    grid = [round(float(r), 6) for r in reject]
    key = round(float(share), 6)
    if key not in grid or 0.0 not in grid:
        raise InvalidArgumentError(f"{share} and 0 must be rejected shares of the curve")
    base, at = float(curve[grid.index(0.0)]), float(curve[grid.index(key)])
    return float("nan") if not base > 0 else 1.0 - at / base


# ---- the unified score's fit ----------------------------------------------------------------


def image_success(pairs: GenuinePairs, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the share of its genuine comparisons at or above ``threshold``, and their number."""
    n = pairs.n_images
    ok = (pairs.score >= threshold).astype(np.float64)
    count = np.bincount(pairs.i, minlength=n) + np.bincount(pairs.j, minlength=n)
    hits = np.bincount(pairs.i, weights=ok, minlength=n) + np.bincount(pairs.j, weights=ok, minlength=n)
    share = np.divide(hits, count, out=np.zeros(n), where=count > 0)
    return share, count.astype(np.float64)


def identity_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index of each image, with every identity in exactly one fold (seeded shuffle of identities)."""
    lab = np.asarray(labels).reshape(-1)
    classes = np.unique(lab)
    if k < 2 or classes.size < k:
        raise InvalidArgumentError(f"{k}-fold by identity needs at least {max(k, 2)} identities, got {classes.size}")
    parts = np.array_split(np.random.default_rng(seed).permutation(classes), k)
    folds = np.empty(lab.size, np.int64)
    for f, held in enumerate(parts):
        folds[np.isin(lab, held)] = f
    return folds


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of ``x`` (a constant column gets std 1)."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def fit_logistic(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, l2: float = 1.0, iterations: int = 100
) -> tuple[np.ndarray, float]:
    """(weights, bias) of a logistic regression of ``target`` in [0, 1] (shares allowed) on ``x``.

    Maximises the weighted binomial log-likelihood minus ``l2/2 * |weights|²`` (the bias is
    not penalised) by Newton's method, halving a step that does not improve the objective. The
    weights are rescaled to mean 1, so ``l2`` weighs like that many average images.
    """
    x = np.asarray(x, np.float64)
    t = np.asarray(target, np.float64).reshape(-1)
    w = np.ones(t.size) if weight is None else np.asarray(weight, np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != t.size or w.size != t.size:
        raise InvalidArgumentError(f"features (N, F), targets (N,) and weights (N,) disagree: {x.shape}, {t.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t)) and np.all(np.isfinite(w))):
        raise InvalidArgumentError("features, targets and weights must be finite")
    if np.any((t < 0) | (t > 1)) or np.any(w < 0) or not w.sum() > 0:
        raise InvalidArgumentError("targets must lie in [0, 1] and weights be non-negative, not all zero")
    w = w / w.mean()  # l2 is relative to one average image
    xb = np.hstack([x, np.ones((t.size, 1))])
    reg = np.r_[np.full(x.shape[1], l2), 0.0]
    beta = np.zeros(xb.shape[1])

    def objective(b: np.ndarray) -> float:
        z = xb @ b
        # -log-likelihood: w * (log(1 + e^z) - t z), computed stably
        return float(np.sum(w * (np.logaddexp(0.0, z) - t * z)) + 0.5 * np.sum(reg * b * b))

    current = objective(beta)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(xb @ beta)))
        grad = xb.T @ (w * (p - t)) + reg * beta
        hess = (xb * (w * p * (1.0 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            trial = beta - scale * step
            value = objective(trial)
            if value <= current + 1e-12:
                break
            scale /= 2.0
        else:
            break
        beta, improved = trial, current - value
        current = value
        if improved < 1e-10 and np.max(np.abs(scale * step)) < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def out_of_fold_logits(
    x: np.ndarray, target: np.ndarray, weight: np.ndarray, folds: np.ndarray, l2: float = 1.0
) -> np.ndarray:
    """Each image's logit from the model fitted (and standardised) without its fold."""
    x = np.asarray(x, np.float64)
    out = np.empty(x.shape[0])
    for f in np.unique(folds):
        test = folds == f
        mean, std = standardise(x[~test])
        w, b = fit_logistic((x[~test] - mean) / std, target[~test], weight[~test], l2)
        out[test] = ((x[test] - mean) / std) @ w + b
    return out


__all__ = [
    "DEFAULT_REJECT",
    "GenuinePairs",
    "area",
    "erc",
    "erc_random",
    "fit_logistic",
    "fnmr_cut",
    "identity_folds",
    "image_success",
    "kept_after_rejecting",
    "out_of_fold_logits",
    "standardise",
]
