"""Thresholds and calibration: the one home of the threshold-at-FMR rule.

A similarity threshold is never invented: it comes from the caller (a cosine in
``[-1, 1]``) or from a :class:`Calibration` measured on a named set of impostor
(and genuine) comparisons and stored in the embedder's model card. The rule that turns
impostor scores into a threshold at a target false-match rate (FMR),
:func:`thresholds_at_fmr`, lives here only; model cards, ``facematch calibrate`` and the
evaluation protocols all call it.

FMR (false-match rate) is the one name for "the share of impostor comparisons at or
above the threshold" across the SDK, REST API, CLI and docs (``far=`` is accepted as a
deprecated alias where it used to be the name).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import CalibrationMissingError, InvalidArgumentError, RateOutOfRangeError

TAIL_MIN_EVENTS = 30  # impostor pairs at the finest point of the tail fit


def check_threshold(value: object, name: str = "threshold") -> float:
    """``value`` as a cosine-similarity threshold: a finite real number in ``[-1, 1]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    t = float(value)
    if not math.isfinite(t) or not -1.0 <= t <= 1.0:
        raise InvalidArgumentError(f"{name} must be a cosine similarity in [-1, 1], got {value}")
    return t


def check_rate(value: object, name: str) -> float:
    """``value`` as an error rate (FMR, FPIR): a finite real number in ``(0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    r = float(value)
    if not math.isfinite(r) or not 0.0 < r < 1.0:
        raise InvalidArgumentError(f"{name} must be a rate in (0, 1), got {value}")
    return r


def threshold_or_rate(threshold: object, rate: object, rate_name: str) -> tuple[float | None, float | None]:
    """Validate an explicit threshold and a target rate of which at most one may be given."""
    if threshold is not None and rate is not None:
        raise InvalidArgumentError(f"give either threshold or {rate_name}, not both")
    return (
        None if threshold is None else check_threshold(threshold),
        None if rate is None else check_rate(rate, rate_name),
    )


class Calibration(BaseModel):
    """Impostor-score calibration measured on a named set.

    ``impostor_curve`` maps a similarity ``s`` to the observed false-match rate
    ``P(impostor >= s)``, as two parallel arrays sorted by increasing similarity.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    set: str
    command: str
    n_genuine_pairs: int = Field(ge=0)
    n_impostor_pairs: int = Field(gt=0)
    default_fmr: float = Field(1e-3, gt=0, lt=1)
    thresholds: dict[str, float]  # "1e-3" -> similarity
    tar_at_threshold: dict[str, float] = Field(default_factory=dict)
    curve_similarity: tuple[float, ...]
    curve_fmr: tuple[float, ...]

    @model_validator(mode="after")
    def _check(self) -> Calibration:
        if len(self.curve_similarity) != len(self.curve_fmr) or len(self.curve_fmr) < 2:
            raise ValueError("calibration curve needs >= 2 points of (similarity, fmr)")
        if any(b < a for a, b in zip(self.curve_similarity, self.curve_similarity[1:], strict=False)):
            raise ValueError("curve_similarity must be non-decreasing")
        if any(b > a for a, b in zip(self.curve_fmr, self.curve_fmr[1:], strict=False)):
            raise ValueError("curve_fmr must be non-increasing")
        return self

    @property
    def min_fmr(self) -> float:
        """The finest false-match rate this calibration can resolve: 1 / impostor pairs."""
        return 1.0 / self.n_impostor_pairs

    def tail_fit(self) -> tuple[float, float] | None:
        """The tail fit below (computed once per calibration: identify reads it for every candidate)."""
        return self._tail_fit

    @cached_property
    def _tail_fit(self) -> tuple[float, float] | None:
        """Exponential fit ``log FMR = a + b * s`` of the impostor tail, as ``(a, b)``.

        Fitted on the curve's points with ``TAIL_MIN_EVENTS / n <= FMR <= 10 * TAIL_MIN_EVENTS / n``,
        the finest decade that still rests on enough impostor pairs. Impostor cosine scores of
        hyperspherical embeddings have a lighter-than-exponential tail, so extrapolating this line
        to finer rates over-estimates the FMR: thresholds it gives are conservative (measured on
        celeb24 in docs/gallery.md). ``None`` when the calibration is too small to fit.
        """
        lo = TAIL_MIN_EVENTS / self.n_impostor_pairs
        hi = 10.0 * lo
        if hi > 0.1:
            return None
        pts = [(s, f) for s, f in zip(self.curve_similarity, self.curve_fmr, strict=True) if lo <= f <= hi and f > 0]
        if len({s for s, _ in pts}) < 5:
            return None
        slope, intercept = np.polyfit([s for s, _ in pts], np.log([f for _, f in pts]), 1)
        if not slope < 0:
            return None
        return float(intercept), float(slope)

    def extrapolates(self, fmr: float) -> bool:
        """Whether the threshold at ``fmr`` lies beyond the measured curve (finer than ``1 / impostor pairs``)."""
        return fmr < self.min_fmr

    def threshold_for(self, fmr: float, *, extrapolate: bool = False) -> float:
        """Similarity threshold whose observed impostor rate is at most ``fmr``.

        The one rule for every target rate (``verify``'s FMR, and ``identify``'s FPIR through
        its per-comparison FMR): inside the measured curve, read off it; finer than
        ``1 / impostor pairs`` (:meth:`extrapolates`), with ``extrapolate=True``, taken from the
        exponential tail fit (:meth:`tail_fit`; never below the finest measured threshold).
        :class:`~facematch.errors.RateOutOfRangeError` (422 ``rate_out_of_range``) when no
        threshold can be established: no extrapolation asked for or possible, or one above 1.
        """
        if not (0.0 < fmr < 1.0) or not math.isfinite(fmr):
            raise InvalidArgumentError(f"target false-match rate must be in (0, 1), got {fmr}")
        if self.extrapolates(fmr):
            fit = self.tail_fit() if extrapolate else None
            if fit is None:
                raise RateOutOfRangeError(
                    f"FMR {fmr:g} is finer than this calibration resolves "
                    f"(1/{self.n_impostor_pairs} impostor pairs on {self.set!r}); calibrate on a larger set "
                    "or give an explicit threshold",
                    rate=fmr,
                    min_fmr=self.min_fmr,
                )
            intercept, slope = fit
            threshold = max(float(self.curve_similarity[-1]), _ceil6((math.log(fmr) - intercept) / slope))
            if threshold > 1.0:
                raise RateOutOfRangeError(
                    f"FMR {fmr:g} needs a similarity threshold of {threshold:.3g}, above 1 (extrapolated from "
                    f"the impostor tail of {self.set!r}); no comparison can reach it: ask for a coarser rate "
                    "or give an explicit threshold",
                    rate=fmr,
                    min_fmr=self.min_fmr,
                )
            return threshold
        key = fmr_key(fmr)
        if key in self.thresholds and math.isclose(float(key), fmr, rel_tol=1e-9):
            return float(self.thresholds[key])
        # smallest similarity whose impostor rate <= fmr, with log-linear interpolation
        sims, fmrs = self.curve_similarity, self.curve_fmr
        for i in range(len(fmrs)):
            if fmrs[i] <= fmr:
                if i == 0:
                    return float(sims[0])
                f0, f1 = math.log(max(fmrs[i - 1], 1e-300)), math.log(max(fmrs[i], 1e-300))
                t = 0.0 if f0 == f1 else (math.log(fmr) - f0) / (f1 - f0)
                return float(sims[i - 1] + t * (sims[i] - sims[i - 1]))
        return float(sims[-1])

    def fmr_at(self, similarity: float | np.ndarray) -> Any:
        """Estimated per-comparison false-match rate at ``similarity``.

        Read off the curve inside its range; above the highest impostor score, from the
        tail fit (at most half of ``1 / impostor pairs``).
        """
        sims = np.asarray(self.curve_similarity, dtype=np.float64)
        logf = np.log(np.clip(np.asarray(self.curve_fmr, dtype=np.float64), 1e-300, None))
        s = np.asarray(similarity, dtype=np.float64)
        est = np.exp(np.interp(s, sims, logf))
        ceiling = min(float(np.exp(logf[-1])), 0.5 * self.min_fmr)
        fit = self.tail_fit()
        beyond = ceiling if fit is None else np.minimum(np.exp(fit[0] + fit[1] * s), ceiling)
        est = np.where(s > sims[-1], beyond, est)
        out = np.clip(est, 0.0, 1.0)
        return float(out) if out.ndim == 0 else out

    @classmethod
    def from_scores(
        cls,
        genuine: np.ndarray,
        impostor: np.ndarray,
        *,
        set_name: str,
        command: str,
        target_fmrs: Sequence[float] = (1e-2, 1e-3, 1e-4),
        default_fmr: float = 1e-3,
        curve_points: int = 256,
    ) -> Calibration:
        """Build a calibration from genuine and impostor similarity scores.

        The threshold for FMR ``f`` is the smallest score ``t`` with
        ``#(impostor >= t) / n <= f``. FMRs finer than ``1/n`` are left out.
        """
        imp = np.sort(np.asarray(impostor, dtype=np.float64).reshape(-1))
        gen = np.asarray(genuine, dtype=np.float64).reshape(-1)
        n = imp.size
        if n == 0:
            raise InvalidArgumentError("calibration needs at least one impostor score")
        thresholds: dict[str, float] = {}
        tars: dict[str, float] = {}
        for f in target_fmrs:
            if f < 1.0 / n:
                continue
            t = float(thresholds_at_fmr(imp, [f], presorted=True)[0])
            thresholds[fmr_key(f)] = _ceil6(t)  # round up: never admit more impostors than asked
            if gen.size:
                tars[fmr_key(f)] = round(float(np.mean(gen >= t)), 6)
        # curve: quantiles of the impostor distribution, dense in the tail (log-spaced FMRs)
        fmr_grid = np.unique(np.concatenate([np.geomspace(1.0 / n, 1.0, curve_points), [1.0 / n, 1.0]]))[::-1]
        sims = [threshold_at_fmr(imp, float(f), presorted=True) for f in fmr_grid]
        fmrs = [float(np.mean(imp >= s)) if n <= 2_000_000 else float(f) for s, f in zip(sims, fmr_grid, strict=True)]
        pts = sorted(set(zip(sims, fmrs, strict=True)), key=lambda p: (p[0], -p[1]))
        cs = [_ceil6(p[0]) for p in pts]
        cf = [p[1] for p in pts]
        # enforce monotonicity after rounding
        for i in range(1, len(cf)):
            cf[i] = min(cf[i], cf[i - 1])
        return cls(
            set=set_name,
            command=command,
            n_genuine_pairs=int(gen.size),
            n_impostor_pairs=int(n),
            default_fmr=default_fmr,
            thresholds=thresholds,
            tar_at_threshold=tars,
            curve_similarity=tuple(cs),
            curve_fmr=tuple(cf),
        )


def verification_threshold(
    threshold: object, fmr: object, calibration: Calibration | None, *, model_id: str | None
) -> tuple[float, float | None]:
    """(threshold, target FMR or None) of a 1:1 decision: the caller's threshold, else the calibration's at ``fmr``.

    The one 1:1 rule (two images, or a probe against one enrolled identity): with neither
    given, the calibration's ``default_fmr`` is the target. Without a calibration only an
    explicit threshold works (``CalibrationMissingError`` otherwise). A rate finer than the
    calibration resolves is extrapolated or refused by :meth:`Calibration.threshold_for`, as for
    identification.
    """
    thr, rate = threshold_or_rate(threshold, fmr, "fmr")
    if thr is not None:
        return thr, None
    if calibration is None:
        raise CalibrationMissingError(
            f"model {model_id!r} has no calibration; run `facematch calibrate DIR --model {model_id} --write` "
            "or pass an explicit threshold"
        )
    target = rate if rate is not None else calibration.default_fmr
    return calibration.threshold_for(target, extrapolate=True), target


def thresholds_at_fmr(
    impostor: np.ndarray | Sequence[float], fmrs: Sequence[float] | np.ndarray, *, presorted: bool = False
) -> np.ndarray:
    """For each target rate ``f``: the smallest ``t`` with ``mean(impostor >= t) <= f``.

    Ties count as matches. ``t`` lies just above an impostor score (the next float64), so
    exactly ``floor(f * n)`` impostors reach it; ``f = 1`` gives the lowest impostor score.
    NaN where ``f < 1 / n`` (not resolvable with ``n`` impostor scores).
    """
    imp = np.asarray(impostor, dtype=np.float64).reshape(-1)
    if not presorted:
        imp = np.sort(imp)
    n = imp.size
    if n == 0:
        raise InvalidArgumentError("need at least one impostor score")
    f = np.asarray(fmrs, dtype=np.float64).reshape(-1)
    if np.any(~np.isfinite(f)) or np.any(f <= 0) or np.any(f > 1):
        raise InvalidArgumentError(f"target rates must be in (0, 1], got {list(f)}")
    allowed = np.floor(f * n + 1e-9).astype(np.int64)  # impostors allowed at or above t
    idx = np.clip(n - allowed - 1, 0, n - 1)
    thr = np.nextafter(imp[idx], np.inf)  # strictly above the (n - allowed)-th smallest score
    thr = np.where(allowed >= n, imp[0], thr)
    return np.where(allowed < 1, np.nan, thr)


def threshold_at_fmr(impostor: np.ndarray | Sequence[float], fmr: float, presorted: bool = False) -> float:
    """:func:`thresholds_at_fmr` for one rate (NaN when ``fmr < 1 / n``)."""
    return float(thresholds_at_fmr(impostor, [fmr], presorted=presorted)[0])


def _ceil6(x: float) -> float:
    return math.ceil(x * 1e6) / 1e6


def fmr_key(fmr: float) -> str:
    """The key of a rate in a card's ``thresholds``: ``1e-3`` style."""
    return f"{fmr:.0e}".replace("e-0", "e-").replace("e+0", "e+")


__all__ = [
    "TAIL_MIN_EVENTS",
    "Calibration",
    "check_rate",
    "check_threshold",
    "fmr_key",
    "threshold_at_fmr",
    "threshold_or_rate",
    "thresholds_at_fmr",
    "verification_threshold",
]
