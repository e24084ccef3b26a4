"""Shared pieces: base classes (requests forbid extra members), OpenAPI examples, faces, timings, problems."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class FaceOut(_Out):
    """A detected face in original image pixels: box (x1, y1, x2, y2), score, 5 landmarks."""

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

    model_config = _examples(_FACE_EXAMPLE)

    @classmethod
    def of(cls, face: Face | None) -> FaceOut | None:
        return None if face is None else cls.from_face(face)

    @classmethod
    def from_face(cls, face: Face) -> FaceOut:
        return cls(**face.to_dict())


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
    "Timings",
    "ValidationIssue",
    "_In",
    "_Out",
]
