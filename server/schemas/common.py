"""Shared pieces: base classes (requests forbid extra members), OpenAPI examples, faces, timings, problems."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from facematch.quality import COMPONENTS, FaceQuality, QualityPolicy, policy_named
from facematch.types import Face

# Valid base64 of a 1x1 PNG: the shape of the field. A real request carries a face photo
# (JPEG, PNG, WebP, ... up to the server's byte and pixel limits).
B64_EXAMPLE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mNoaGgAAAMEAYF1LgG8AAAAAElFTkSuQmCC"
_FACE_EXAMPLE: dict[str, Any] = {
    "box": [412.3, 188.9, 605.2, 441.7],
    "score": 0.87121,
    "landmarks": [[470.1, 290.2], [553.8, 289.0], [513.4, 341.6], [480.5, 385.2], [547.0, 384.3]],
}
_TIMINGS_EXAMPLE: dict[str, Any] = {"total_ms": 41.2, "prepare_ms": 30.5, "embed_ms": 9.8, "search_ms": None}


def _examples(*examples: dict[str, Any], strict: bool = False) -> ConfigDict:
    """Model config that forbids extra members and documents ``examples`` in the OpenAPI schema.

    ``strict=True`` for JSON request bodies: ``"threshold": true``, ``"k": true`` or ``"fmr": "1e-4"``
    are refused instead of coerced (multipart text fields are strings by nature: their models stay lax).
    """
    if strict:
        return ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": list(examples)})
    return ConfigDict(extra="forbid", json_schema_extra={"examples": list(examples)})


_CANDIDATE_EXAMPLE: dict[str, Any] = {
    "identity_id": "obama",
    "similarity": 0.74,
    "estimated_fmr": 2.35e-6,
    "estimated_fmr_below_resolution": True,
    "template_id": 12,
    "metadata": {"team": "red"},
}
_OUTCOME_EXAMPLE: dict[str, Any] = {
    "index": 0,
    "source": "alice1.jpg",
    "status": "enrolled",
    "template_id": 7,
    "faces_found": 1,
    "face": _FACE_EXAMPLE,
    "error": None,
}
_IDENTITY_EXAMPLE: dict[str, Any] = {
    "identity_id": "alice",
    "template_ids": [1, 2],
    "num_templates": 2,
    "metadata": {"team": "red"},
    "created_at": 1.7e9,
    "updated_at": 1.7e9,
}


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=64 * 1024 * 1024)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _q(name: str) -> Any:
    c = COMPONENTS[name]
    return Field(default=None, description=f"{c.description}; unit: {c.unit}; null: not measured")


_QUALITY_EXAMPLE: dict[str, Any] = {
    "unified": 93.1,
    "unified_status": "scored",
    "missing": [],
    "model_id": "w600k_mbf",
    "pose_method": "5-point",
    "inter_ocular_px": 108.3,
    "face_size_px": 233.0,
    "visible_fraction": 1.0,
    "detection_score": 0.78,
    "yaw_deg": 1.6,
    "pitch_deg": 3.0,
    "roll_deg": -0.8,
    "sharpness": 41.3,
    "brightness": 152.0,
    "contrast": 38.2,
    "dark_fraction": 0.0,
    "bright_fraction": 0.0012,
    "feature_norm": 26.4,
    "mirror_consistency": None,
}


class QualityOut(_Out):
    """A face's quality (facematch.quality): each component with its unit, and the unified score.

    ``unified`` is the embedder card's fitted score in [0, 100] (higher is better); it is null
    with ``unified_status`` ``no_quality_model`` (the card has no quality model) or
    ``missing_components`` (``missing`` names them): never an invented score.
    """

    unified: float | None = Field(
        default=None, ge=0, le=100, description="unified quality score 0-100, higher is better"
    )
    unified_status: Literal["scored", "no_quality_model", "missing_components"] = Field(
        description="scored; no_quality_model: the model card has no fitted quality block; "
        "missing_components: the quality model needs components not measured for this face (see missing)"
    )
    missing: list[str] = Field(default_factory=list, description="components the quality model needs but lacks")
    model_id: str | None = Field(
        default=None, description="the embedder whose feature norm and quality model these are"
    )
    pose_method: Literal["5-point", "106-point"] | None = Field(default=None, description="how the pose was measured")
    inter_ocular_px: float | None = _q("inter_ocular_px")
    face_size_px: float | None = _q("face_size_px")
    visible_fraction: float | None = _q("visible_fraction")
    detection_score: float | None = _q("detection_score")
    yaw_deg: float | None = _q("yaw_deg")
    pitch_deg: float | None = _q("pitch_deg")
    roll_deg: float | None = _q("roll_deg")
    sharpness: float | None = _q("sharpness")
    brightness: float | None = _q("brightness")
    contrast: float | None = _q("contrast")
    dark_fraction: float | None = _q("dark_fraction")
    bright_fraction: float | None = _q("bright_fraction")
    feature_norm: float | None = _q("feature_norm")
    mirror_consistency: float | None = _q("mirror_consistency")

    model_config = _examples(_QUALITY_EXAMPLE)

    @classmethod
    def of(cls, quality: FaceQuality | None) -> QualityOut | None:
        return None if quality is None else cls(**quality.to_dict())


class QualityFailureOut(_Out):
    """One component outside the quality policy: its value and the limit it missed."""

    component: str = Field(description="the quality component (a QualityOut field name, or unified)")
    value: float = Field(description="its measured value")
    limit: float = Field(description="the policy's limit it missed")
    kind: Literal["min", "max_abs"] = Field(description="min: value >= limit required; max_abs: |value| <= limit")
    unit: str = Field(description="the unit of value and limit")
    message: str = Field(description="the failure in words")

    model_config = _examples(
        {
            "component": "sharpness",
            "value": 4.21,
            "limit": 8.0,
            "kind": "min",
            "unit": "grey levels",
            "message": "sharpness 4.21 is below the minimum 8 (grey levels)",
        }
    )


class FaceOut(_Out):
    """A detected face in original image pixels: box (x1, y1, x2, y2), score, 5 landmarks, and its quality."""

    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="[x1, y1, x2, y2]: left, top, right, bottom edges in pixels of the original "
        "(orientation-corrected) image; x grows rightwards, y downwards",
    )
    score: float = Field(description="detection confidence in [0, 1]")
    landmarks: list[list[float]] = Field(
        min_length=5,
        max_length=5,
        description="5 [x, y] points in original-image pixels: left eye, right eye, nose tip, "
        "left and right mouth corners (left/right as seen in the image)",
    )
    quality: QualityOut | None = Field(default=None, description="the face's quality; null when not measured")

    model_config = _examples({**_FACE_EXAMPLE, "quality": _QUALITY_EXAMPLE})

    @classmethod
    def of(cls, face: Face | None, quality: FaceQuality | None = None) -> FaceOut | None:
        return None if face is None else cls.from_face(face, quality)

    @classmethod
    def from_face(cls, face: Face, quality: FaceQuality | None = None) -> FaceOut:
        return cls(**face.to_dict(), quality=QualityOut.of(quality))


class QualityParams(_In):
    """Per-request quality gate: a base policy and optional limits that replace its own."""

    quality_policy: Literal["enrolment", "probe", "none"] | None = Field(
        default=None,
        description="base quality policy: enrolment (strict), probe (lenient) or none; default: enrolment for the "
        "gallery's enrolment routes, probe for /verify and /identify (docs/quality.md lists their limits)",
    )
    min_quality: float | None = Field(default=None, ge=0, le=100, description="minimum unified quality score (0-100)")
    min_face_size: float | None = Field(default=None, ge=0, le=1e5, description="minimum box short side, px")
    min_inter_ocular: float | None = Field(default=None, ge=0, le=1e5, description="minimum inter-ocular distance, px")
    min_detection_score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="minimum detection score (faces below the detector's threshold are never found)",
    )
    max_abs_yaw: float | None = Field(default=None, ge=0, le=180, description="maximum |yaw|, degrees")
    max_abs_pitch: float | None = Field(default=None, ge=0, le=180, description="maximum |pitch|, degrees")
    min_sharpness: float | None = Field(default=None, ge=0, le=1e4, description="minimum sharpness, grey levels")
    min_visible_fraction: float | None = Field(
        default=None, ge=0, le=1, description="minimum share of the face inside the image"
    )

    def quality_gate(self, default: str) -> QualityPolicy:
        """The policy this request asks for: its base (or ``default``) with its limits replacing the base's."""
        return policy_named(
            self.quality_policy or default,
            min_quality=self.min_quality,
            min_face_size=self.min_face_size,
            min_inter_ocular=self.min_inter_ocular,
            min_detection_score=self.min_detection_score,
            max_abs_yaw=self.max_abs_yaw,
            max_abs_pitch=self.max_abs_pitch,
            min_sharpness=self.min_sharpness,
            min_visible_fraction=self.min_visible_fraction,
        )


class Timings(_Out):
    """Server-side time spent on this request, in milliseconds."""

    model_config = _examples(_TIMINGS_EXAMPLE)

    total_ms: float = Field(description="from the start of the request's processing to the response")
    prepare_ms: float | None = Field(default=None, description="decode, detect and align")
    embed_ms: float | None = Field(default=None, description="waiting for and running the batched embedding call")
    search_ms: float | None = Field(default=None, description="gallery search")


class ImageSize(_Out):
    """Size of the original image, after EXIF orientation, in pixels."""

    width: int = Field(description="width in pixels")
    height: int = Field(description="height in pixels")

    model_config = _examples({"width": 1280, "height": 720})


class ValidationIssue(_Out):
    """One way the request does not match the schema."""

    loc: list[str] = Field(description='where: e.g. ["body", "k"]')
    msg: str = Field(description="what is wrong, in words")
    type: str = Field(description="machine-readable kind of the issue (pydantic's error type)")

    model_config = _examples(
        {"loc": ["body", "k"], "msg": "Input should be less than or equal to 1000", "type": "less_than_equal"}
    )


class Problem(BaseModel):
    """An error (RFC 9457 problem details) with a stable ``code``."""

    type: str = Field(description="URI of the error type: urn:facematch:error:<code>")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(description="the HTTP status code")
    code: str = Field(description="stable machine-readable error code, e.g. no_face, image_too_large")
    detail: str = Field(description="what went wrong, in words (names the image or field concerned)")
    instance: str | None = Field(default=None, description="the request path")
    errors: list[ValidationIssue] | None = Field(default=None, description="schema violations, for invalid_request")
    details: dict[str, Any] | None = Field(
        default=None, description="machine-readable context (e.g. the enrolment report, a limit, an identity id)"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:facematch:error:no_face",
                    "title": "Unprocessable Content",
                    "status": 422,
                    "code": "no_face",
                    "detail": "no face found in the image",
                    "instance": "/v1/verify",
                }
            ]
        }
    )


__all__ = [
    "B64_EXAMPLE",
    "FaceOut",
    "ImageSize",
    "Problem",
    "QualityFailureOut",
    "QualityOut",
    "QualityParams",
    "Timings",
    "ValidationIssue",
    "_In",
    "_Out",
]
