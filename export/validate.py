"""Numerical checks of an exported model against its source, on real aligned faces and random inputs."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from facematch.errors import FacematchError
from facematch.eval.metrics import OperatingPoint, tar_at_fmr
from facematch.preprocess import to_blob
from facematch.similarity import l2_normalize

from .faces import FaceSet, random_crops
from .runners import Runner, run_batched

logger = logging.getLogger(__name__)

# minimum cosine between source and export, per precision (the acceptance bar)
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
# maximum relative error of a pre-normalisation norm output, per precision
MAX_NORM_REL_ERR = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}
CHECK_BATCHES = (1, 7)
DEFAULT_FMR = 1e-3


class ExportValidationError(FacematchError):
    """An exported artifact does not reproduce its source within the acceptance bar."""

    code = "export_validation_failed"
    http_status = 422


@dataclass(frozen=True)
class CosineCheck:
    """Cosine similarity between source and export embeddings of one input set at one batch size."""

    name: str
    n: int
    batch: int
    min_cos: float
    mean_cos: float
    threshold: float
    gating: bool  # whether this check decides pass/fail
    passed: bool


@dataclass(frozen=True)
class TarCheck:
    """Verification accuracy (TAR at a fixed FMR, all pairs of a labelled folder) of source and export.

    ``resolvable`` is False when ``fmr`` is finer than ``1 / n_impostor``: the TARs are then None.
    """

    fmr: float
    tar_reference: float | None
    tar_candidate: float | None
    delta: float | None
    n_genuine: int
    n_impostor: int
    resolvable: bool = True


@dataclass(frozen=True)
class ValidationReport:
    """Everything measured when an export is compared with its source."""

    precision: str
    min_cos_threshold: float
    checks: tuple[CosineCheck, ...]
    tar: TarCheck | None
    norm_max_rel_err: float | None
    images: str | None
    n_images: int
    passed: bool
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def faces_min_cos(self) -> float | None:
        return next((c.min_cos for c in self.checks if c.name == "faces"), None)

    @property
    def faces_mean_cos(self) -> float | None:
        return next((c.mean_cos for c in self.checks if c.name == "faces"), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [asdict(c) for c in self.checks]
        return _rounded(d)

    def summary(self) -> str:
        parts = [f"{c.name}@b{c.batch}: min {c.min_cos:.6f} mean {c.mean_cos:.6f}" for c in self.checks]
        t = self.tar
        if t is not None and t.delta is not None:  # delta is set exactly when both TARs were measured
            parts.append(f"TAR@FMR{t.fmr:g} {t.tar_reference:.4f} -> {t.tar_candidate:.4f} ({t.delta:+.4f})")
        elif t is not None:
            parts.append(f"TAR@FMR{t.fmr:g} n/a (finer than 1/{t.n_impostor} impostor pairs)")
        if self.norm_max_rel_err is not None:
            parts.append(f"norm max rel err {self.norm_max_rel_err:.2e}")
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} ({self.precision}, bar min cos >= {self.min_cos_threshold}): " + "; ".join(parts)


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 7)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of ``a`` and ``b`` (in float64: the bars sit a few 1e-6 below 1)."""
    if a.shape != b.shape:
        raise ExportValidationError(f"output shapes differ: {a.shape} vs {b.shape}")
    return np.sum(l2_normalize(a, dtype=np.float64)[0] * l2_normalize(b, dtype=np.float64)[0], axis=1)


def pair_operating_point(emb: np.ndarray, labels: tuple[str, ...], fmr: float = DEFAULT_FMR) -> OperatingPoint:
    """TAR at false-match rate ``fmr`` over all pairs of ``emb`` (never finer than ``1 / impostor pairs``)."""
    e = l2_normalize(emb, dtype=np.float64)[0]
    lab = np.asarray(labels)
    iu = np.triu_indices(len(e), 1)
    sims = (e @ e.T)[iu]
    same = (lab[:, None] == lab[None, :])[iu]
    gen, imp = sims[same], sims[~same]
    if gen.size == 0 or imp.size == 0:
        return OperatingPoint(fmr, False, None, None, None, None, int(gen.size), int(imp.size), 1.0)
    return tar_at_fmr(gen, imp, [fmr])[0]


def _check(name: str, a: np.ndarray, b: np.ndarray, batch: int, bar: float, gating: bool) -> CosineCheck:
    cos = row_cosines(a, b)
    lo, mean = float(cos.min()), float(cos.mean())
    return CosineCheck(name, len(cos), batch, lo, mean, bar, gating, bool(lo >= bar))


def compare(
    reference: Runner,
    candidate: Runner,
    *,
    precision: str = "fp32",
    faces: FaceSet | None = None,
    fmr: float = DEFAULT_FMR,
    min_cos: float | None = None,
    random_gating: bool = True,
    seed: int = 0,
) -> ValidationReport:
    """Compare ``candidate`` with ``reference`` on ``faces`` (all, batched) plus random inputs at batch 1 and 7.

    Both runners take the candidate's input spec (they are the same model in two forms). The
    verdict uses ``min_cos`` (default :data:`MIN_COSINE` of ``precision``) on every gating check.
    """
    bar = MIN_COSINE[precision] if min_cos is None else float(min_cos)
    spec = candidate.spec
    size = spec.size or (112, 112)
    notes: list[str] = []
    checks: list[CosineCheck] = []
    batches = (candidate.fixed_batch,) if candidate.fixed_batch else CHECK_BATCHES
    if candidate.fixed_batch:
        notes.append(f"fixed batch {candidate.fixed_batch}: batch-size checks run at that size only")
    tar: TarCheck | None = None
    norm_err: float | None = None
    if faces is not None and len(faces):
        x = to_blob(faces.crops, spec, size)
        ref, ref_norm = run_batched(reference, x)
        got, got_norm = run_batched(candidate, x)
        checks.append(_check("faces", ref, got, candidate.fixed_batch or 32, bar, True))
        few = x[: max(batches)]
        for b in batches:
            got_b = np.concatenate([run_batched(candidate, few[i : i + b], b)[0] for i in range(0, len(few), b)])
            checks.append(_check("faces", ref[: len(few)], got_b, b, bar, True))
        if got_norm is not None:
            truth = ref_norm if ref_norm is not None else np.linalg.norm(ref, axis=1)
            norm_err = float(np.max(np.abs(got_norm - truth) / np.maximum(truth, 1e-12)))
        if faces.labels is not None and len(set(faces.labels)) > 1:
            p_ref, p_got = pair_operating_point(ref, faces.labels, fmr), pair_operating_point(got, faces.labels, fmr)
            # an operating point's TAR is None exactly where its FMR is not resolvable
            delta = p_got.tar - p_ref.tar if p_got.tar is not None and p_ref.tar is not None else None
            ok = delta is not None
            tar = TarCheck(fmr, p_ref.tar, p_got.tar, delta, p_ref.n_genuine, p_ref.n_impostor, ok)
            if not ok:
                notes.append(f"TAR@FMR {fmr:g} not measured: {p_ref.n_impostor} impostor pairs resolve FMR >= 1/n")
        else:
            notes.append("faces are unlabelled (flat folder): TAR not measured")
    else:
        notes.append("no aligned faces given: checked on random inputs only")
    rnd = to_blob(random_crops(max(batches), size, seed), spec)
    ref_r, ref_r_norm = run_batched(reference, rnd)
    if norm_err is None:  # no faces: the norm output is still checked, on the random inputs
        _, got_r_norm = run_batched(candidate, rnd)
        if got_r_norm is not None:
            truth = ref_r_norm if ref_r_norm is not None else np.linalg.norm(ref_r, axis=1)
            norm_err = float(np.max(np.abs(got_r_norm - truth) / np.maximum(truth, 1e-12)))
    for b in batches:
        got_r = np.concatenate([run_batched(candidate, rnd[i : i + b], b)[0] for i in range(0, len(rnd), b)])
        checks.append(_check("random", ref_r, got_r, b, bar, random_gating))
    if not random_gating:
        notes.append("random-input checks are reported, not gating (int8 ranges are calibrated on faces)")
    passed = all(c.passed for c in checks if c.gating)
    if norm_err is not None and norm_err > MAX_NORM_REL_ERR[precision]:
        passed = False
        notes.append(f"norm output relative error {norm_err:.2e} > {MAX_NORM_REL_ERR[precision]:g}")
    report = ValidationReport(
        precision=precision,
        min_cos_threshold=bar,
        checks=tuple(checks),
        tar=tar,
        norm_max_rel_err=norm_err,
        images=str(faces.root) if faces is not None else None,
        n_images=len(faces) if faces is not None else 0,
        passed=passed,
        notes=tuple(notes),
    )
    logger.info("validation: %s", report.summary())
    return report


__all__ = [
    "CHECK_BATCHES",
    "MAX_NORM_REL_ERR",
    "MIN_COSINE",
    "CosineCheck",
    "ExportValidationError",
    "TarCheck",
    "ValidationReport",
    "compare",
    "pair_operating_point",
    "row_cosines",
]
