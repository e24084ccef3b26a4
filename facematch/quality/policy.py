"""Quality gates: :class:`QualityPolicy`, its strict enrolment and lenient probe defaults, :class:`LowQualityError`.

See :mod:`facematch.quality` for the overview and ``docs/quality.md`` for the numbers behind
the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..errors import FacematchError, InvalidArgumentError
from .components import COMPONENTS, UNIFIED_UNIT
from .score import FaceQuality


class LowQualityError(FacematchError):
    """A face is below a quality policy's limits; ``details["reasons"]`` lists each failing component."""

    code = "low_quality"
    http_status = 422


# ---- gates --------------------------------------------------------------------------------

LimitKind = Literal["min", "max_abs"]
# policy field -> (component it limits, kind, lowest allowed limit, highest allowed limit)
_LIMITS: dict[str, tuple[str, LimitKind, float, float]] = {
    "min_quality": ("unified", "min", 0.0, 100.0),
    "min_face_size": ("face_size_px", "min", 0.0, 1e5),
    "min_inter_ocular": ("inter_ocular_px", "min", 0.0, 1e5),
    "min_detection_score": ("detection_score", "min", 0.0, 1.0),
    "max_abs_yaw": ("yaw_deg", "max_abs", 0.0, 180.0),
    "max_abs_pitch": ("pitch_deg", "max_abs", 0.0, 180.0),
    "min_sharpness": ("sharpness", "min", 0.0, 1e4),
    "min_visible_fraction": ("visible_fraction", "min", 0.0, 1.0),
}
POLICY_FIELDS = tuple(_LIMITS)


@dataclass(frozen=True)
class QualityFailure:
    """One component outside a policy's limit."""

    component: str
    value: float
    limit: float
    kind: LimitKind  # "min": value must be >= limit; "max_abs": |value| must be <= limit
    unit: str

    @property
    def message(self) -> str:
        if self.kind == "min":
            return f"{self.component} {self.value:.4g} is below the minimum {self.limit:g} ({self.unit})"
        return f"|{self.component}| {abs(self.value):.4g} is above the maximum {self.limit:g} ({self.unit})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "value": round(self.value, 4),
            "limit": self.limit,
            "kind": self.kind,
            "unit": self.unit,
            "message": self.message,
        }


@dataclass(frozen=True)
class QualityCheck:
    """A policy applied to one face: the failures, and the limits that could not be checked."""

    failures: tuple[QualityFailure, ...]
    unchecked: tuple[str, ...]  # components the policy limits but that were not measured for this face

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def reason(self) -> str:
        return "; ".join(f.message for f in self.failures)


@dataclass(frozen=True)
class QualityPolicy:
    """Optional limits on a face's quality; ``None`` leaves a component unlimited.

    A limit on a component that was not measured for a face (the geometry of an aligned-crop
    input; the unified score of a model without a quality block) is not applied and is listed
    in :attr:`QualityCheck.unchecked`.
    """

    min_quality: float | None = None  # unified score, 0-100
    min_face_size: float | None = None  # px, short side of the detection box
    min_inter_ocular: float | None = None  # px
    min_detection_score: float | None = None  # 0-1
    max_abs_yaw: float | None = None  # degrees
    max_abs_pitch: float | None = None  # degrees
    min_sharpness: float | None = None  # grey levels (see COMPONENTS["sharpness"])
    min_visible_fraction: float | None = None  # 0-1
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        for key, (_, _, lo, hi) in _LIMITS.items():
            v = getattr(self, key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise InvalidArgumentError(f"{key} must be a number, got {type(v).__name__} {v!r}")
            f = float(v)
            if not math.isfinite(f) or not lo <= f <= hi:
                raise InvalidArgumentError(f"{key} must be in [{lo:g}, {hi:g}], got {v}")
            object.__setattr__(self, key, f)

    @property
    def limits(self) -> dict[str, float]:
        """The limits that are set, by policy field."""
        return {k: getattr(self, k) for k in POLICY_FIELDS if getattr(self, k) is not None}

    def with_overrides(self, **overrides: float | None) -> QualityPolicy:
        """This policy with some limits replaced (``None`` values are ignored; unknown names refused)."""
        unknown = sorted(set(overrides) - set(POLICY_FIELDS))
        if unknown:
            raise InvalidArgumentError(f"unknown quality limits {unknown}; known: {', '.join(POLICY_FIELDS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        return replace(self, **given, name=f"{self.name}+overrides")  # type: ignore[arg-type]

    def check(self, quality: FaceQuality) -> QualityCheck:
        """Which limits ``quality`` fails, and which could not be checked."""
        failures: list[QualityFailure] = []
        unchecked: list[str] = []
        for key, (component, kind, _, _) in _LIMITS.items():
            limit = getattr(self, key)
            if limit is None:
                continue
            value = quality.unified if component == "unified" else getattr(quality, component)
            if value is None:
                unchecked.append(component)
                continue
            bad = value < limit if kind == "min" else abs(value) > limit
            if bad:
                unit = UNIFIED_UNIT if component == "unified" else COMPONENTS[component].unit
                failures.append(QualityFailure(component, float(value), float(limit), kind, unit))
        return QualityCheck(tuple(failures), tuple(unchecked))

    def require(self, quality: FaceQuality, label: str | None = None) -> None:
        """Raise :class:`LowQualityError` (with every failing component) unless ``quality`` passes."""
        result = self.check(quality)
        if result.passed:
            return
        where = f"{label}: " if label else ""
        raise LowQualityError(
            f"{where}face quality below the {self.name} policy: {result.reason}",
            reasons=[f.to_dict() for f in result.failures],
            policy=self.name,
            **({"image": label} if label else {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: getattr(self, k) for k in POLICY_FIELDS}}


# Defaults. The measurements behind each number (benchmarks/bench_quality.py --section policy, on
# celeb24 with the default pack) are in docs/quality.md; in short, at full resolution celeb24's
# FNMR at the FMR-1e-3 threshold is 7.3 %, and a face scaled down to an inter-ocular distance of
# 24 / 16 / 10 / 8 px fails 8.1 / 9.8 / 20 / 36 % of its genuine comparisons; sharpness 8 is a
# Gaussian blur of sigma ~1 (8.8 %), 3 one of sigma ~3 (41 %); unified scores below 80 (4.4 % of
# celeb24, held out) belong to images whose comparisons fail 25 % of the time; detection scores
# below 0.65 to images failing 45 %; |yaw| beyond 45 degrees nearly doubles the FNMR (13 % vs 7 %).
ENROLMENT_POLICY = QualityPolicy(
    min_quality=80.0,
    min_face_size=48.0,
    min_inter_ocular=24.0,
    min_detection_score=0.65,
    max_abs_yaw=45.0,
    max_abs_pitch=40.0,
    min_sharpness=8.0,
    min_visible_fraction=0.95,
    name="enrolment",
)
PROBE_POLICY = QualityPolicy(
    min_face_size=20.0,
    min_inter_ocular=10.0,
    min_sharpness=3.0,
    min_visible_fraction=0.5,
    name="probe",
)
NO_POLICY = QualityPolicy(name="none")
POLICIES: dict[str, QualityPolicy] = {"enrolment": ENROLMENT_POLICY, "probe": PROBE_POLICY, "none": NO_POLICY}


def policy_named(name: str, **overrides: float | None) -> QualityPolicy:
    """The named policy (``enrolment``, ``probe`` or ``none``) with some limits replaced."""
    if name not in POLICIES:
        raise InvalidArgumentError(f"quality policy must be one of {', '.join(POLICIES)}, got {name!r}")
    return POLICIES[name].with_overrides(**overrides)
