"""Open-set decisions: per-identity score aggregation and thresholds from a target FPIR.

An impostor probe (someone not enrolled) is falsely accepted when its best identity
score reaches the threshold. With ``N`` independent comparisons at per-comparison
false-match rate ``FMR``: ``FPIR = 1 - (1 - FMR)^N``, so the threshold for a target
FPIR is the calibration's threshold at ``FMR = 1 - (1 - FPIR)^(1/N)``.

What ``N`` is: the number of *templates* in the gallery. Whatever the aggregation
(max, mean or top-k mean), an identity's aggregate reaches ``t`` only if at least one
of its template scores does, so the event "some identity passes" is contained in
"some template passes", whose probability is at most ``1 - (1 - FMR)^templates``
under independence. Templates of one identity are correlated, so the real FPIR is
lower than the target: the choice is conservative (it never under-promises), at the
cost of a slightly higher threshold than counting identities would give.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

from ..calibration import Calibration
from ..errors import InvalidArgumentError
from .config import AGGREGATIONS, Aggregation

logger = logging.getLogger(__name__)


def per_comparison_fmr(fpir: float, n: int) -> float:
    """The per-comparison FMR that gives ``fpir`` over ``n`` independent comparisons."""
    if not (0.0 < fpir < 1.0) or not math.isfinite(fpir):
        raise InvalidArgumentError(f"target FPIR must be in (0, 1), got {fpir}")
    n = max(int(n), 1)
    return float(-math.expm1(math.log1p(-fpir) / n))


def threshold_for_fpir(calibration: Calibration, fpir: float, n: int) -> float:
    """Similarity threshold for a target FPIR over ``n`` template comparisons.

    Large galleries need per-comparison rates finer than the calibration set resolves
    (``1 / impostor pairs``); those thresholds come from the calibration's exponential
    tail fit, which over-estimates the FMR there (conservative) and is logged.
    """
    fmr = per_comparison_fmr(fpir, n)
    if needs_extrapolation(calibration, fpir, n):
        _warn_extrapolated(calibration.set, calibration.n_impostor_pairs, fpir)
    return calibration.threshold_for(fmr, extrapolate=True)


@functools.lru_cache(maxsize=64)
def _warn_extrapolated(calibration_set: str, n_impostor_pairs: int, fpir: float) -> None:
    """Log once per calibration and target, not on every search."""
    logger.warning(
        "FPIR %g on this gallery needs a per-comparison FMR finer than the calibration on %r resolves "
        "(1/%d); thresholds are extrapolated from the impostor tail (conservative)",
        fpir,
        calibration_set,
        n_impostor_pairs,
    )


def needs_extrapolation(calibration: Calibration, fpir: float, n: int) -> bool:
    """Whether the threshold for ``fpir`` over ``n`` comparisons lies beyond the measured curve."""
    return calibration.extrapolates(per_comparison_fmr(fpir, n))


def check_aggregation(method: str, top_k: int) -> None:
    if method not in AGGREGATIONS:
        raise InvalidArgumentError(f"aggregation must be one of {AGGREGATIONS}, got {method!r}")
    if not isinstance(top_k, int) or top_k < 1:
        raise InvalidArgumentError(f"aggregation top_k must be a positive integer, got {top_k!r}")


def aggregate(
    owners: np.ndarray, scores: np.ndarray, template_ids: np.ndarray, method: Aggregation, top_k: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-identity scores from template scores.

    Returns ``(identities, aggregated scores, best template id)`` sorted by decreasing
    score (ties broken by identity for determinism).
    """
    owners = np.asarray(owners, np.int64)
    scores = np.asarray(scores, np.float64)
    template_ids = np.asarray(template_ids, np.int64)
    if owners.size == 0:
        return np.zeros((0,), np.int64), np.zeros((0,), np.float64), np.zeros((0,), np.int64)
    order = np.lexsort((-scores, owners))  # by owner, then score descending
    o, s, t = owners[order], scores[order], template_ids[order]
    first = np.ones(o.size, bool)
    np.not_equal(o[1:], o[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], o.size)
    ident = o[starts]
    best_tid = t[starts]
    if method == "max":
        agg = s[starts]
    elif method == "mean":
        agg = np.add.reduceat(s, starts) / (ends - starts)
    else:
        csum = np.concatenate(([0.0], np.cumsum(s)))
        take = np.minimum(ends - starts, top_k)
        agg = (csum[starts + take] - csum[starts]) / take
    rank = np.lexsort((ident, -agg))
    return ident[rank], agg[rank], best_tid[rank]


__all__ = ["aggregate", "check_aggregation", "needs_extrapolation", "per_comparison_fmr", "threshold_for_fpir"]
