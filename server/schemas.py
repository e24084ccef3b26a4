"""Request and response models (separate classes: what comes in is never what goes out).

Optional response members default to ``None`` so the OpenAPI examples (from which FastAPI
drops nulls) still validate; responses always carry them, as ``null`` when empty.

Images travel as multipart file parts, or in JSON as base64 strings. Responses carry
boxes, landmarks, scores and similarities; embeddings appear only in ``EmbedResponse``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Json

from facematch.types import Candidate, Face, IdentifyResult

# Valid base64 of a 1x1 PNG: the shape of the field. A real request carries a face photo
# (JPEG, PNG, WebP, ... up to the server's byte and pixel limits).
B64_EXAMPLE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mNoaGgAAAMEAYF1LgG8AAAAAElFTkSuQmCC"
_FACE_EXAMPLE: dict[str, Any] = {
    "box": [412.3, 188.9, 605.2, 441.7],
    "score": 0.87121,
    "landmarks": [[470.1, 290.2], [553.8, 289.0], [513.4, 341.6], [480.5, 385.2], [547.0, 384.3]],
}
_TIMINGS_EXAMPLE: dict[str, Any] = {"total_ms": 41.2, "prepare_ms": 30.5, "embed_ms": 9.8, "search_ms": None}


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    """Model config that forbids extra members and documents ``examples`` in the OpenAPI schema."""
    return ConfigDict(extra="forbid", json_schema_extra={"examples": list(examples)})


_CANDIDATE_EXAMPLE: dict[str, Any] = {
    "identity_id": "obama",
    "similarity": 0.74,
    "estimated_fmr": 2.3e-6,
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


# ---- shared pieces --------------------------------------------------------------------------
class FaceOut(_Out):
    """A detected face in original image pixels: box (x1, y1, x2, y2), score, 5 landmarks."""

    box: list[float] = Field(min_length=4, max_length=4)
    score: float
    landmarks: list[list[float]] = Field(min_length=5, max_length=5)

    model_config = _examples(_FACE_EXAMPLE)

    @classmethod
    def of(cls, face: Face | None) -> FaceOut | None:
        return None if face is None else cls(**face.to_dict())


class Timings(_Out):
    """Server-side time spent on this request, in milliseconds."""

    model_config = _examples(_TIMINGS_EXAMPLE)

    total_ms: float
    prepare_ms: float | None = Field(default=None, description="decode, detect and align")
    embed_ms: float | None = Field(default=None, description="waiting for and running the batched embedding call")
    search_ms: float | None = Field(default=None, description="gallery search")


class ImageSize(_Out):
    width: int
    height: int

    model_config = _examples({"width": 1280, "height": 720})


# ---- verify ---------------------------------------------------------------------------------
class VerifyParams(_In):
    """Options of POST /verify (multipart text fields or JSON members)."""

    threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="cosine threshold; give it or far, not both"
    )
    far: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="target false-match rate (threshold from the card)"
    )


class VerifyJSON(VerifyParams):
    """POST /verify as JSON: both images base64-encoded."""

    image1: str = Field(min_length=1, description="base64-encoded image (a data: URL prefix is accepted)")
    image2: str = Field(min_length=1, description="base64-encoded image")

    model_config = _examples({"image1": B64_EXAMPLE, "image2": B64_EXAMPLE, "far": 0.001})


class VerifyResponse(_Out):
    is_match: bool
    similarity: float = Field(description="cosine similarity of the two faces, in [-1, 1]")
    threshold: float
    target_fmr: float | None = Field(
        default=None, description="false-match rate the threshold was chosen for (None: caller's)"
    )
    model_id: str
    face1: FaceOut
    face2: FaceOut
    timings: Timings

    model_config = _examples(
        {
            "is_match": True,
            "similarity": 0.7093,
            "threshold": 0.260985,
            "target_fmr": 0.001,
            "model_id": "w600k_mbf",
            "face1": _FACE_EXAMPLE,
            "face2": _FACE_EXAMPLE,
            "timings": _TIMINGS_EXAMPLE,
        }
    )


# ---- identify -------------------------------------------------------------------------------
class IdentifyParams(_In):
    """Options of POST /identify."""

    k: int = Field(default=5, ge=1, le=1000, description="candidates to return per face")
    threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="cosine threshold; give it or fpir, not both"
    )
    fpir: float | None = Field(default=None, gt=0.0, lt=1.0, description="target false-positive identification rate")
    faces: Literal["largest", "all"] = Field(default="largest", description="identify the largest face, or every face")


class IdentifyJSON(IdentifyParams):
    image: str = Field(min_length=1, description="base64-encoded image")

    model_config = _examples({"image": B64_EXAMPLE, "k": 5, "fpir": 0.01})


class CandidateOut(_Out):
    identity_id: str
    similarity: float
    estimated_fmr: float | None = Field(default=None, description="per-comparison false-match rate at this similarity")
    template_id: int | None = None
    metadata: dict[str, Any]

    model_config = _examples(_CANDIDATE_EXAMPLE)

    @classmethod
    def of(cls, c: Candidate) -> CandidateOut:
        return cls(**c.to_dict())


class FaceIdentification(_Out):
    """The answer for one face: the accepted identity, or ``is_unknown``; candidates ranked either way."""

    face: FaceOut | None = None
    identity_id: str | None = None
    is_unknown: bool
    threshold: float
    target_fpir: float | None = None
    threshold_extrapolated: bool = Field(
        default=False,
        description="true when the FPIR threshold lies beyond the calibration's measured range "
        "(extrapolated from the impostor tail, conservatively)",
    )
    candidates: list[CandidateOut]

    model_config = _examples(
        {
            "face": _FACE_EXAMPLE,
            "identity_id": None,
            "is_unknown": True,
            "threshold": 0.3751,
            "target_fpir": 0.01,
            "threshold_extrapolated": False,
            "candidates": [{**_CANDIDATE_EXAMPLE, "similarity": 0.21, "estimated_fmr": 0.018}],
        }
    )

    @classmethod
    def of(cls, r: IdentifyResult) -> FaceIdentification:
        return cls(
            face=FaceOut.of(r.face),
            identity_id=r.identity_id,
            is_unknown=r.is_unknown,
            threshold=r.threshold,
            target_fpir=r.target_fpir,
            threshold_extrapolated=r.threshold_extrapolated,
            candidates=[CandidateOut.of(c) for c in r.candidates],
        )


class IdentifyResponse(_Out):
    results: list[FaceIdentification] = Field(description="one per face, largest first")
    faces_total: int = Field(description="faces found in the image")
    truncated: bool = Field(description="true when more faces were found than max_faces_per_image")
    gallery_size: int
    model_id: str
    timings: Timings

    model_config = _examples(
        {
            "results": [
                {
                    "face": _FACE_EXAMPLE,
                    "identity_id": "obama",
                    "is_unknown": False,
                    "threshold": 0.3751,
                    "target_fpir": 0.01,
                    "threshold_extrapolated": False,
                    "candidates": [_CANDIDATE_EXAMPLE],
                }
            ],
            "faces_total": 1,
            "truncated": False,
            "gallery_size": 5,
            "model_id": "w600k_mbf",
            "timings": _TIMINGS_EXAMPLE,
        }
    )


# ---- detect / embed -------------------------------------------------------------------------
class DetectJSON(_In):
    image: str = Field(min_length=1, description="base64-encoded image")

    model_config = _examples({"image": B64_EXAMPLE})


class DetectResponse(_Out):
    faces: list[FaceOut] = Field(description="largest first")
    faces_total: int
    truncated: bool
    image: ImageSize
    timings: Timings

    model_config = _examples(
        {
            "faces": [_FACE_EXAMPLE],
            "faces_total": 1,
            "truncated": False,
            "image": {"width": 1280, "height": 720},
            "timings": {**_TIMINGS_EXAMPLE, "embed_ms": None},
        }
    )


class EmbedParams(_In):
    faces: Literal["largest", "all"] = "largest"


class EmbedJSON(EmbedParams):
    image: str = Field(min_length=1, description="base64-encoded image")

    model_config = _examples({"image": B64_EXAMPLE, "faces": "largest"})


_EMBEDDING_EXAMPLE: dict[str, Any] = {"face": _FACE_EXAMPLE, "vector": [0.0213, -0.0471, 0.0032]}  # `dim` numbers


class EmbeddingOut(_Out):
    face: FaceOut | None = None
    vector: list[float] = Field(description="unit-norm embedding: biometric data")

    model_config = _examples(_EMBEDDING_EXAMPLE)


class EmbedResponse(_Out):
    model_id: str
    dim: int
    embeddings: list[EmbeddingOut]
    faces_total: int
    truncated: bool
    timings: Timings

    model_config = _examples(
        {
            "model_id": "w600k_mbf",
            "dim": 512,
            "embeddings": [_EMBEDDING_EXAMPLE],
            "faces_total": 1,
            "truncated": False,
            "timings": _TIMINGS_EXAMPLE,
        }
    )


# ---- gallery --------------------------------------------------------------------------------
IDENTITY_ID_DESC = "identity id (1-256 characters, no control characters, no '/': it names the identity in URLs)"
IDENTITY_ID_PATTERN = r"^[^/]+$"


class EnrollForm(_In):
    """Text fields of a multipart enrolment."""

    identity_id: str = Field(min_length=1, max_length=256, pattern=IDENTITY_ID_PATTERN, description=IDENTITY_ID_DESC)
    metadata: Json[dict[str, Any]] | None = Field(default=None, description="JSON object stored with the identity")


class EnrollJSON(_In):
    identity_id: str = Field(min_length=1, max_length=256, pattern=IDENTITY_ID_PATTERN, description=IDENTITY_ID_DESC)
    images: list[str] = Field(min_length=1, description="base64-encoded face images, one template each")
    metadata: dict[str, Any] | None = None

    model_config = _examples({"identity_id": "alice", "images": [B64_EXAMPLE], "metadata": {"team": "red"}})


class NoParams(_In):
    """No options besides the image(s)."""


class AddFacesJSON(_In):
    images: list[str] = Field(min_length=1, description="base64-encoded face images")

    model_config = _examples({"images": [B64_EXAMPLE, B64_EXAMPLE]})


class ImageOutcomeOut(_Out):
    index: int
    source: str
    status: Literal["enrolled", "no_face", "multiple_faces", "invalid_image"]
    template_id: int | None = None
    faces_found: int
    face: FaceOut | None = None
    error: str | None = None

    model_config = _examples(_OUTCOME_EXAMPLE)


class EnrollResponse(_Out):
    identity_id: str
    created: bool
    template_ids: list[int]
    outcomes: list[ImageOutcomeOut]
    timings: Timings

    model_config = _examples(
        {
            "identity_id": "alice",
            "created": True,
            "template_ids": [7],
            "outcomes": [
                _OUTCOME_EXAMPLE,
                {
                    "index": 1,
                    "source": "alice-back.jpg",
                    "status": "no_face",
                    "template_id": None,
                    "faces_found": 0,
                    "face": None,
                    "error": "no face found in the image",
                },
            ],
            "timings": {"total_ms": 88.1, "prepare_ms": None, "embed_ms": None, "search_ms": None},
        }
    )


class IdentityOut(_Out):
    identity_id: str
    template_ids: list[int]
    num_templates: int
    metadata: dict[str, Any]
    created_at: float
    updated_at: float

    model_config = _examples(_IDENTITY_EXAMPLE)


class IdentityPage(_Out):
    items: list[IdentityOut]
    next_cursor: str | None = Field(
        default=None, description="pass as ?cursor= for the next page; null on the last page"
    )

    model_config = _examples({"items": [_IDENTITY_EXAMPLE], "next_cursor": "YWxpY2U"})


class DeletedFace(_Out):
    identity_id: str
    face_id: int
    deleted: bool = True

    model_config = _examples({"identity_id": "alice", "face_id": 2, "deleted": True})


# ---- operations and errors ------------------------------------------------------------------
class HealthResponse(_Out):
    status: Literal["ok", "failed"]

    model_config = _examples({"status": "ok"})


class GallerySummary(_Out):
    identities: int
    templates: int
    read_only: bool

    model_config = _examples({"identities": 120, "templates": 355, "read_only": False})


class ReadyResponse(_Out):
    ready: bool
    status: Literal["loading", "ready", "failed"]
    model_id: str | None = None
    gallery: GallerySummary | None = None
    detail: str | None = None

    model_config = _examples(
        {
            "ready": True,
            "status": "ready",
            "model_id": "w600k_mbf",
            "gallery": {"identities": 120, "templates": 355, "read_only": False},
            "detail": None,
        },
        {"ready": False, "status": "loading", "model_id": None, "gallery": None, "detail": None},
    )


class ValidationIssue(_Out):
    loc: list[str]
    msg: str
    type: str

    model_config = _examples(
        {"loc": ["body", "k"], "msg": "Input should be less than or equal to 1000", "type": "less_than_equal"}
    )


class Problem(BaseModel):
    """An error (RFC 9457 problem details) with a stable ``code``."""

    type: str
    title: str
    status: int
    code: str = Field(description="stable machine-readable error code, e.g. no_face, image_too_large")
    detail: str
    instance: str | None = None
    errors: list[ValidationIssue] | None = None
    details: dict[str, Any] | None = None

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
    "AddFacesJSON",
    "CandidateOut",
    "DeletedFace",
    "DetectJSON",
    "DetectResponse",
    "EmbedJSON",
    "EmbedParams",
    "EmbedResponse",
    "EmbeddingOut",
    "EnrollForm",
    "EnrollJSON",
    "EnrollResponse",
    "FaceIdentification",
    "FaceOut",
    "GallerySummary",
    "HealthResponse",
    "IdentifyJSON",
    "IdentifyParams",
    "IdentifyResponse",
    "IdentityOut",
    "IdentityPage",
    "ImageOutcomeOut",
    "ImageSize",
    "NoParams",
    "Problem",
    "ReadyResponse",
    "Timings",
    "VerifyJSON",
    "VerifyParams",
    "VerifyResponse",
]
