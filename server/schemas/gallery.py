"""Request and response models of the gallery routes."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, Json

from facematch.gallery.store import validate_identity_id
from facematch.gallery.types import OutcomeStatus
from facematch.types import IdentityVerifyResult

from .common import (
    _FACE_EXAMPLE,
    _IDENTITY_EXAMPLE,
    _OUTCOME_EXAMPLE,
    _TIMINGS_EXAMPLE,
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
from .match import ThresholdParams

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
    """POST /gallery/identities as JSON: the images base64-encoded (with the quality gate's options)."""

    identity_id: IdentityId
    images: list[str] = Field(min_length=1, description="base64-encoded face images, one template each")
    metadata: dict[str, Any] | None = Field(default=None, description="JSON object stored with the identity")

    model_config = _examples(
        {"identity_id": "alice", "images": [B64_EXAMPLE], "metadata": {"team": "red"}}, strict=True
    )


class NoParams(_In):
    """No options besides the image(s)."""


class AddTemplatesForm(QualityParams):
    """Text fields of a multipart template addition: the quality gate's options."""


class AddTemplatesJSON(QualityParams):
    """POST /gallery/identities/{identity_id}/templates as JSON: the images base64-encoded."""

    images: list[str] = Field(min_length=1, description="base64-encoded face images, one template each")

    model_config = _examples({"images": [B64_EXAMPLE, B64_EXAMPLE]}, strict=True)


class ImageOutcomeOut(_Out):
    """What one enrolment image gave: a template, or why none."""

    index: int = Field(description="position of the image in the request")
    source: str = Field(description="the upload's file name (multipart), else #<index>")
    status: OutcomeStatus = Field(
        description="enrolled, or why the image gave no template: the error code the image alone gets "
        "on the matching routes (no_face, multiple_faces, invalid_image, image_too_large, image_too_small, "
        "unsupported_media)"
    )
    template_id: int | None = Field(default=None, description="the template written (null unless enrolled)")
    faces_found: int = Field(description="faces the detector found in the image")
    face: FaceOut | None = Field(default=None, description="the face enrolled (the largest)")
    error: str | None = Field(default=None, description="why the image gave no template, in words")
    quality: QualityOut | None = Field(default=None, description="the face's quality, when it was measured")
    reasons: list[QualityFailureOut] = Field(
        default_factory=list, description="low_quality: each failing component, its value and its limit"
    )

    model_config = _examples(_OUTCOME_EXAMPLE)


class EnrollResponse(_Out):
    """The per-image report of an enrolment."""

    identity_id: str = Field(description="the identity enrolled (its id after Unicode NFC normalisation)")
    created: bool = Field(description="true when this request created the identity")
    template_ids: list[int] = Field(description="the templates written, in image order")
    outcomes: list[ImageOutcomeOut] = Field(description="one per image, in request order")
    timings: Timings = Field(description="server-side time spent on the request")

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
    """An enrolled identity (its templates by id only: templates are biometric data)."""

    identity_id: str = Field(description="the identity's id")
    template_ids: list[int] = Field(description="ids of its templates, ascending")
    num_templates: int = Field(description="how many templates it has")
    metadata: dict[str, Any] = Field(description="its stored metadata")
    created_at: float = Field(description="when it was created, unix seconds")
    updated_at: float = Field(description="when its templates or metadata last changed, unix seconds")

    model_config = _examples(_IDENTITY_EXAMPLE)


class IdentityPage(_Out):
    """One page of identities, ordered by id."""

    items: list[IdentityOut] = Field(description="up to `limit` identities")
    next_cursor: str | None = Field(
        default=None, description="pass as ?cursor= for the next page; null on the last page"
    )

    model_config = _examples({"items": [_IDENTITY_EXAMPLE], "next_cursor": "YWxpY2U"})


class DeletedTemplate(_Out):
    """A template that was removed (its identity is kept, even when left without templates)."""

    identity_id: str = Field(description="the identity the template belonged to")
    template_id: int = Field(description="the template removed")
    deleted: bool = Field(default=True, description="always true")

    model_config = _examples({"identity_id": "alice", "template_id": 2, "deleted": True})


class IdentityUpdate(_In):
    """PATCH /gallery/identities/{identity_id}: what to change."""

    metadata: dict[str, Any] = Field(
        description="the identity's new metadata: a JSON object that replaces the stored one as a whole "
        "(at most 64 KiB as JSON)"
    )

    model_config = _examples({"metadata": {"team": "blue", "badge": 1234}}, strict=True)


class IdentityVerifyParams(ThresholdParams, QualityParams):
    """Options of POST /gallery/identities/{identity_id}/verify (multipart text fields or JSON members),
    with the probe's quality gate."""


class IdentityVerifyJSON(IdentityVerifyParams):
    """POST /gallery/identities/{identity_id}/verify as JSON: the probe image base64-encoded."""

    image: str = Field(min_length=1, description="base64-encoded probe image (its largest face is used)")

    model_config = _examples({"image": B64_EXAMPLE, "fmr": 0.001}, strict=True)


class TemplateScoreOut(_Out):
    """The probe's cosine similarity to one stored template of the identity."""

    template_id: int = Field(description="template id (as in the enrolment report)")
    similarity: float = Field(description="cosine similarity of the probe to this template, in [-1, 1]")

    model_config = _examples({"template_id": 7, "similarity": 0.6812})


class IdentityVerifyResponse(_Out):
    """1:1 against an enrolled identity: is the probe this identity?"""

    identity_id: str = Field(description="the identity compared with")
    is_match: bool = Field(description="similarity >= threshold: the probe is this identity")
    similarity: float = Field(
        description="the per-template similarities aggregated by the gallery's rule (`aggregation`), in [-1, 1]"
    )
    threshold: float = Field(
        description="cosine-similarity threshold of the decision: a 1:1 threshold, not scaled by the gallery's size"
    )
    target_fmr: float | None = Field(
        default=None, description="false-match rate the threshold was chosen for (null: the caller's threshold)"
    )
    aggregation: str = Field(description="how template scores make `similarity`: `max`, `mean` or `topk_mean`")
    templates: list[TemplateScoreOut] = Field(description="every template's similarity, best first")
    face: FaceOut | None = Field(default=None, description="the probe face that was compared")
    metadata: dict[str, Any] | None = Field(
        default=None, description="the identity's stored metadata; null for keys without the enroll scope"
    )
    model_id: str = Field(description="embedder card id")
    timings: Timings = Field(description="server-side time spent on the request")

    model_config = _examples(
        {
            "identity_id": "alice",
            "is_match": True,
            "similarity": 0.6812,
            "threshold": 0.260985,
            "target_fmr": 0.001,
            "aggregation": "max",
            "templates": [{"template_id": 7, "similarity": 0.6812}, {"template_id": 8, "similarity": 0.5901}],
            "face": _FACE_EXAMPLE,
            "metadata": {"team": "red"},
            "model_id": "w600k_mbf",
            "timings": _TIMINGS_EXAMPLE,
        }
    )

    @classmethod
    def of(cls, r: IdentityVerifyResult, timings: Timings, *, metadata: bool = True) -> IdentityVerifyResponse:
        return cls(
            identity_id=r.identity_id,
            is_match=r.is_match,
            similarity=round(r.similarity, 6),
            threshold=round(r.threshold, 6),
            target_fmr=r.target_fmr,
            aggregation=r.aggregation,
            templates=[TemplateScoreOut(**t.to_dict()) for t in r.templates],
            face=FaceOut.of(r.face, r.quality),
            metadata=dict(r.metadata) if metadata else None,
            model_id=r.model_id,
            timings=timings,
        )


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
    "IdentityUpdate",
    "IdentityVerifyJSON",
    "IdentityVerifyParams",
    "IdentityVerifyResponse",
    "ImageOutcomeOut",
    "NoParams",
    "TemplateScoreOut",
]
