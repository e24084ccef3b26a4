"""Request and response models of the gallery routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, Json

from facematch.gallery.store import validate_identity_id

from .common import (
    _IDENTITY_EXAMPLE,
    _OUTCOME_EXAMPLE,
    B64_EXAMPLE,
    FaceOut,
    QualityFailureOut,
    QualityOut,
    QualityParams,
    Timings,
    _examples,
    _In,
    _Out,
)

IDENTITY_ID_DESC = (
    "identity id: 1-256 characters after Unicode NFC normalisation; not only whitespace, not '.' or '..', "
    "no '/', no control, format (zero-width, BOM, bidi) or line/paragraph separator characters "
    "(the rule of facematch.gallery.store.validate_identity_id, shared by the SDK, CLI and server)"
)
# One rule for the SDK, CLI and server: the gallery's own validator (which also NFC-normalises).
IdentityId = Annotated[
    str, Field(min_length=1, max_length=1024, description=IDENTITY_ID_DESC), AfterValidator(validate_identity_id)
]


class EnrollForm(QualityParams):
    """Text fields of a multipart enrolment (with the quality gate: the strict enrolment policy by default)."""

    identity_id: IdentityId
    metadata: Json[dict[str, Any]] | None = Field(default=None, description="JSON object stored with the identity")


class EnrollJSON(QualityParams):
    identity_id: IdentityId
    images: list[str] = Field(min_length=1, description="base64-encoded face images, one template each")
    metadata: dict[str, Any] | None = None

    model_config = _examples({"identity_id": "alice", "images": [B64_EXAMPLE], "metadata": {"team": "red"}})


class NoParams(_In):
    """No options besides the image(s)."""


class AddTemplatesForm(QualityParams):
    """Text fields of a multipart template addition: the quality gate's options."""


class AddTemplatesJSON(QualityParams):
    images: list[str] = Field(min_length=1, description="base64-encoded face images, one template each")

    model_config = _examples({"images": [B64_EXAMPLE, B64_EXAMPLE]})


class ImageOutcomeOut(_Out):
    index: int
    source: str
    status: Literal["enrolled", "no_face", "multiple_faces", "invalid_image", "low_quality"]
    template_id: int | None = None
    faces_found: int
    face: FaceOut | None = None
    error: str | None = None
    quality: QualityOut | None = Field(default=None, description="the face's quality, when it was measured")
    reasons: list[QualityFailureOut] = Field(
        default_factory=list, description="low_quality: each failing component, its value and its limit"
    )

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


class DeletedTemplate(_Out):
    identity_id: str
    template_id: int
    deleted: bool = True

    model_config = _examples({"identity_id": "alice", "template_id": 2, "deleted": True})


__all__ = [
    "IDENTITY_ID_DESC",
    "AddTemplatesForm",
    "AddTemplatesJSON",
    "DeletedTemplate",
    "EnrollForm",
    "EnrollJSON",
    "EnrollResponse",
    "IdentityId",
    "IdentityOut",
    "IdentityPage",
    "ImageOutcomeOut",
    "NoParams",
]
