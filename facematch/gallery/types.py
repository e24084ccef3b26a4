"""Typed results of gallery operations (no embeddings in them: templates are biometric data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..types import Face

if TYPE_CHECKING:
    from ..quality import FaceQuality, QualityFailure

# "enrolled", or the code of the error the image alone gets (the same code on every route);
# "low_quality": the face is below the enrolment quality policy
OutcomeStatus = Literal[
    "enrolled",
    "no_face",
    "multiple_faces",
    "invalid_image",
    "image_too_large",
    "image_too_small",
    "unsupported_media",
    "not_aligned",
    "low_quality",
]


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one enrolment image: the template it gave, or why it gave none."""

    index: int  # position of the image in the call
    source: str  # file name for paths, "#<index>" for bytes/arrays/PIL
    status: OutcomeStatus
    template_id: int | None = None
    face: Face | None = None  # the face that was enrolled (None for aligned crops / embeddings)
    faces_found: int = 0
    error: str | None = None
    quality: FaceQuality | None = None  # the face's quality, when it was measured
    reasons: tuple[QualityFailure, ...] = ()  # why a low_quality image was refused: component, value, limit

    @property
    def ok(self) -> bool:
        return self.status == "enrolled"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "source": self.source,
            "status": self.status,
            "template_id": self.template_id,
            "faces_found": self.faces_found,
            "face": self.face.to_dict() if self.face is not None else None,
            "error": self.error,
            "quality": self.quality.to_dict() if self.quality is not None else None,
            "reasons": [r.to_dict() for r in self.reasons],
        }


@dataclass(frozen=True)
class EnrollReport:
    """Per-image outcome of an enrolment; ``template_ids`` are the templates written."""

    identity_id: str
    outcomes: tuple[ImageOutcome, ...]
    created: bool  # True when the call created the identity (enroll), False when it added faces

    @property
    def template_ids(self) -> tuple[int, ...]:
        return tuple(o.template_id for o in self.outcomes if o.template_id is not None)

    @property
    def failed(self) -> tuple[ImageOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def ok(self) -> bool:
        """True when every image gave a template."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "created": self.created,
            "template_ids": list(self.template_ids),
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


@dataclass(frozen=True)
class IdentityInfo:
    """An enrolled identity: its templates (ids only), metadata and timestamps (unix seconds)."""

    identity_id: str
    template_ids: tuple[int, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def num_templates(self) -> int:
        return len(self.template_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "template_ids": list(self.template_ids),
            "num_templates": self.num_templates,
            "metadata": dict(self.metadata),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Page:
    """One page of identities, ordered by id; pass ``next_cursor`` back for the next page."""

    items: tuple[IdentityInfo, ...]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"items": [i.to_dict() for i in self.items], "next_cursor": self.next_cursor}


@dataclass(frozen=True)
class GalleryInfo:
    """Summary of an open gallery."""

    path: str
    model_id: str | None
    dim: int | None
    identities: int
    templates: int
    backend: str
    index: str  # human description of the live index (kind, storage, device)
    read_only: bool
    calibrated: bool  # whether FPIR-based thresholds are available

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "model_id": self.model_id,
            "dim": self.dim,
            "identities": self.identities,
            "templates": self.templates,
            "backend": self.backend,
            "index": self.index,
            "read_only": self.read_only,
            "calibrated": self.calibrated,
        }


BulkStatus = Literal[
    "enrolled",
    "skipped",
    "no_face",
    "multiple_faces",
    "invalid_image",
    "image_too_large",
    "image_too_small",
    "unsupported_media",
    "not_aligned",
    "low_quality",
    "error",
]


@dataclass(frozen=True)
class BulkImageOutcome:
    """One image of a bulk enrolment: enrolled, skipped (already enrolled), or why it gave no template."""

    identity_id: str
    source: str  # the image's path as the bulk source names it (relative to the folder or CSV)
    status: BulkStatus
    template_id: int | None = None
    faces_found: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image is in the gallery (enrolled now, or before)."""
        return self.status in ("enrolled", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity_id": self.identity_id,
            "source": self.source,
            "status": self.status,
            "template_id": self.template_id,
            "faces_found": self.faces_found,
            "error": self.error,
        }


@dataclass(frozen=True)
class BulkEnrollReport:
    """Per-image outcome of a bulk enrolment (folder or CSV), in source order."""

    outcomes: tuple[BulkImageOutcome, ...]
    created: tuple[str, ...]  # identities this run created
    extended: tuple[str, ...]  # existing identities this run added templates to

    def count(self, status: BulkStatus) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> tuple[BulkImageOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": len(self.outcomes),
            "enrolled": self.count("enrolled"),
            "skipped": self.count("skipped"),
            "failed": len(self.failed),
            "created": list(self.created),
            "extended": list(self.extended),
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


@dataclass(frozen=True)
class ExportInfo:
    """What :meth:`Gallery.export_to` wrote."""

    path: str
    model_id: str
    dim: int
    identities: int
    templates: int
    format_version: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "model_id": self.model_id,
            "dim": self.dim,
            "identities": self.identities,
            "templates": self.templates,
            "format_version": self.format_version,
        }


@dataclass(frozen=True)
class ImportReport:
    """What :meth:`Gallery.import_from` did: identities imported and skipped (already present)."""

    path: str
    model_id: str
    imported: tuple[str, ...]
    skipped: tuple[str, ...]
    templates: int  # templates written

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "model_id": self.model_id,
            "imported": len(self.imported),
            "skipped": len(self.skipped),
            "templates": self.templates,
            "skipped_identities": list(self.skipped),
        }


__all__ = [
    "BulkEnrollReport",
    "BulkImageOutcome",
    "BulkStatus",
    "EnrollReport",
    "ExportInfo",
    "GalleryInfo",
    "IdentityInfo",
    "ImageOutcome",
    "ImportReport",
    "OutcomeStatus",
    "Page",
]
