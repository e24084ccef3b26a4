"""Enrolment from images: image lists, the one preparation of an enrolment image, per-image reports.

Enrolment composes the matcher's shared steps and nothing else:

    prepared = [prepare_for_enrolment(matcher, image, aligned=...) or the image error, ...]
    embeddings, norms = matcher.embed_crops(<crops[0] of every prepared image>)   # one call
    qualities = assess_enrolment(matcher, prepared, norms)       # facematch.quality, no model run
    report = gallery.enroll_prepared(identity_id, prepared, embeddings, qualities=qualities, ...)

:meth:`Gallery.enroll` runs all three; the server runs the middle step through its own
micro-batcher and calls the other two itself. This module holds the pieces between the
steps: which image errors become per-image outcomes (:data:`IMAGE_ERRORS`), the
multi-face policy, the quality gate (a :class:`~facematch.quality.QualityPolicy`, strict by
default: :data:`~facematch.quality.ENROLMENT_POLICY`), the :class:`EnrollReport` and the error
raised when nothing is enrolled.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import numpy as np

from ..errors import (
    FacematchError,
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidArgumentError,
    InvalidImageError,
    MultipleFacesError,
    NoFaceError,
    NotAlignedError,
    UnsupportedMediaError,
)
from ..quality import ENROLMENT_POLICY, FaceQuality, LowQualityError, QualityPolicy, assess_each
from ..types import PreparedImage
from .binding import ModelBinding
from .store import Store, dump_metadata, duplicate_identity, identity_not_found, validate_identity_id
from .types import EnrollReport, ImageOutcome, OutcomeStatus

if TYPE_CHECKING:
    from ..matcher import FaceMatcher

MultiFacePolicy = Literal["largest", "reject"]
MULTI_FACE_POLICIES = ("largest", "reject")
# image errors that become an outcome of their image (any other FacematchError propagates)
IMAGE_ERRORS: tuple[type[FacematchError], ...] = (NoFaceError, InvalidImageError, MultipleFacesError)
# an image outcome's status is its error's code; these are the InvalidImageError codes it can be
_IMAGE_ERROR_BY_CODE: dict[str, type[InvalidImageError]] = {
    e.code: e
    for e in (InvalidImageError, ImageTooLargeError, ImageTooSmallError, UnsupportedMediaError, NotAlignedError)
}


def source_label(image: Any, i: int | None = None) -> str:
    """How reports and errors name image ``i``: a path's file name, else ``#i`` (``"image"`` for
    the one image of a call that takes one)."""
    if isinstance(image, (str, os.PathLike)):
        return Path(os.fspath(image)).name
    return "image" if i is None else f"#{i}"


def as_image_list(images: Any) -> list[Any]:
    """One image or a sequence of images as a list (a 4-D array is a stack of images)."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence):
        return list(images)
    if hasattr(images, "mode") and hasattr(images, "size"):  # a PIL image
        return [images]
    raise InvalidArgumentError(f"images must be an image or a list of images, got {type(images).__name__}")


def check_sources(sources: object, n: int) -> list[str]:
    """``sources`` as ``n`` strings, one per image, or ``InvalidArgumentError``."""
    if isinstance(sources, str) or not isinstance(sources, Sequence) or len(sources) != n:
        raise InvalidArgumentError(f"sources must be {n} strings, one per image")
    if not all(isinstance(x, str) for x in sources):
        raise InvalidArgumentError(f"sources must be {n} strings, one per image")
    return list(sources)


def prepare_for_enrolment(matcher: FaceMatcher, image: Any, *, aligned: bool) -> PreparedImage:
    """The one preparation of an enrolment image: ``matcher.prepare(image, "all", max_faces=1, aligned=aligned)``.

    All faces are detected so ``faces_total`` counts them for the multi-face policy; the
    largest is kept (its crop is ``crops[0]``).
    """
    return matcher.prepare(image, "all", max_faces=1, aligned=aligned)


def prepare_images(
    matcher: FaceMatcher, images: Sequence[Any], *, aligned: bool
) -> tuple[list[PreparedImage | FacematchError], np.ndarray, list[FaceQuality]]:
    """Prepare every image (keeping each image's error), embed all their crops in one call, assess them.

    Returns what :meth:`Gallery.enroll_prepared` takes: one item per image, one embedding row
    and one :class:`~facematch.quality.FaceQuality` per :class:`PreparedImage` item, in order.
    """
    prepared: list[PreparedImage | FacematchError] = []
    for image in images:
        try:
            prepared.append(prepare_for_enrolment(matcher, image, aligned=aligned))
        except IMAGE_ERRORS as exc:
            prepared.append(exc)
    crops = [p.crops[:1] for p in prepared if isinstance(p, PreparedImage)]
    if not crops:
        return prepared, np.zeros((0, matcher.dim), np.float32), []
    embeddings, norms = matcher.embed_crops(np.concatenate(crops))
    return prepared, embeddings, assess_enrolment(matcher, prepared, norms)


def assess_enrolment(matcher: FaceMatcher, prepared: Sequence[Any], norms: Any) -> list[FaceQuality]:
    """The quality of the enrolled face (``crops[0]``) of each :class:`PreparedImage` item, in order.

    ``norms`` holds one pre-normalisation norm per such item (what ``embed_crops`` returned
    for their first crops): :func:`facematch.quality.assess_each`.
    """
    return assess_each(matcher, prepared, norms)


def outcome_for_error(index: int, source: str, exc: FacematchError) -> ImageOutcome:
    """The outcome of an image whose preparation raised ``exc``; other errors than :data:`IMAGE_ERRORS` propagate."""
    status: OutcomeStatus
    faces = 0
    if isinstance(exc, NoFaceError):
        status = "no_face"
    elif isinstance(exc, InvalidImageError):
        status = exc.code if exc.code in _IMAGE_ERROR_BY_CODE else "invalid_image"  # type: ignore[assignment]
    elif isinstance(exc, MultipleFacesError):
        status = "multiple_faces"
        found = exc.details.get("faces")
        faces = int(found) if isinstance(found, int) else 0
    else:
        raise exc
    return ImageOutcome(index, source, status, faces_found=faces, error=exc.message)


def plan_enrolment(
    prepared: Sequence[PreparedImage | FacematchError],
    embeddings: Any,
    sources: Sequence[str],
    multi_face: MultiFacePolicy,
    qualities: Sequence[FaceQuality] | None = None,
    policy: QualityPolicy | None = None,
) -> tuple[list[ImageOutcome], list[np.ndarray]]:
    """Per-image outcomes (template ids still unset) and the embeddings of the accepted images, in order.

    ``embeddings`` (and ``qualities``) have one row per :class:`PreparedImage` item of
    ``prepared``. An image with several faces is ``multiple_faces`` under the ``reject``
    policy, else its largest face is considered; a face that fails the quality ``policy`` is
    ``low_quality``, with the failing components as ``reasons``.
    """
    n_prepared = sum(isinstance(p, PreparedImage) for p in prepared)
    rows = _embedding_rows(embeddings, n_prepared)
    quals = _quality_rows(qualities, n_prepared, policy)
    outcomes: list[ImageOutcome] = []
    vectors: list[np.ndarray] = []
    row = 0
    for i, (item, label) in enumerate(zip(prepared, sources, strict=True)):
        if isinstance(item, FacematchError):
            outcomes.append(outcome_for_error(i, label, item))
            continue
        if not isinstance(item, PreparedImage):
            raise InvalidArgumentError(
                f"prepared[{i}] must be a PreparedImage or a FacematchError, got {type(item).__name__}"
            )
        if len(item) == 0:
            raise InvalidArgumentError(f"prepared[{i}] holds no face crop")
        vector, quality = rows[row], quals[row]
        row += 1
        if item.faces_total > 1 and multi_face == "reject":
            msg = f"{item.faces_total} faces found; the gallery's multi-face policy is 'reject'"
            outcomes.append(
                ImageOutcome(i, label, "multiple_faces", faces_found=item.faces_total, error=msg, quality=quality)
            )
            continue
        if policy is not None and quality is not None:
            check = policy.check(quality)
            if not check.passed:
                outcomes.append(
                    ImageOutcome(
                        i,
                        label,
                        "low_quality",
                        face=item.face(0),
                        faces_found=item.faces_total,
                        error=f"face quality below the {policy.name} policy: {check.reason}",
                        quality=quality,
                        reasons=check.failures,
                    )
                )
                continue
        outcomes.append(
            ImageOutcome(i, label, "enrolled", face=item.face(0), faces_found=item.faces_total, quality=quality)
        )
        vectors.append(vector)
    return outcomes, vectors


def _quality_rows(
    qualities: Sequence[FaceQuality] | None, n: int, policy: QualityPolicy | None
) -> list[FaceQuality | None]:
    if qualities is None:
        if policy is not None and policy.limits:
            raise InvalidArgumentError(
                f"the {policy.name} quality policy needs the faces' quality: pass qualities= "
                "(assess_enrolment(matcher, prepared, norms)), or quality=None to enrol without a quality gate"
            )
        return [None] * n
    rows = list(qualities)
    if len(rows) != n or not all(isinstance(q, FaceQuality) for q in rows):
        raise InvalidArgumentError(f"qualities must hold one FaceQuality per prepared image ({n}), got {len(rows)}")
    return list(rows)


def _embedding_rows(embeddings: Any, n: int) -> np.ndarray:
    try:
        arr = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"embeddings must be a numeric array: {exc}") from exc
    if n == 0 and arr.size == 0:
        return np.zeros((0, 0), np.float32)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise InvalidArgumentError(f"embeddings must have one row per prepared image ({n}), got shape {arr.shape}")
    return arr


def with_template_ids(outcomes: Sequence[ImageOutcome], template_ids: Sequence[int]) -> tuple[ImageOutcome, ...]:
    """The outcomes with the written template ids set on the enrolled ones (in order)."""
    enrolled = [o for o in outcomes if o.ok]
    tid_of = {o.index: t for o, t in zip(enrolled, template_ids, strict=True)}
    return tuple(replace(o, template_id=tid_of[o.index]) if o.ok else o for o in outcomes)


def raise_for(report: EnrollReport) -> NoReturn:
    """Nothing was enrolled: ``LowQualityError`` / ``NoFaceError`` / ``MultipleFacesError`` / the image error
    of the first failure (``InvalidImageError``, ``ImageTooLargeError``, ``UnsupportedMediaError``, ...).

    The report is in ``details["report"]``; a ``LowQualityError`` also lists every refused
    image's failing components in ``details["reasons"]`` (image, component, value, limit).
    """
    failed = report.failed
    summary = "; ".join(f"{o.source}: {o.status}" + (f" ({o.error})" if o.reasons else "") for o in failed)
    statuses = {o.status for o in failed}
    details: dict[str, Any] = {"report": report.to_dict(), "identity_id": report.identity_id}
    msg = f"nothing enrolled for {report.identity_id!r}: {summary}"
    if "low_quality" in statuses:
        reasons = [{"image": o.source, **r.to_dict()} for o in failed for r in o.reasons]
        raise LowQualityError(msg, reasons=reasons, **details)
    if "no_face" in statuses:
        raise NoFaceError(msg, **details)
    if "multiple_faces" in statuses:
        raise MultipleFacesError(msg, **details)
    first = failed[0].status if failed else "invalid_image"
    raise _IMAGE_ERROR_BY_CODE.get(first, InvalidImageError)(msg, **details)


class Enrolment:
    """The gallery's enrolment methods (a part of :class:`~facematch.gallery.Gallery`).

    They validate, prepare and embed (:func:`prepare_images`), apply the multi-face
    policy and build the report here; the one write goes through the gallery's
    ``_write_templates`` (one store transaction, then the index follows).
    """

    # provided by Gallery
    multi_face: MultiFacePolicy
    _store: Store
    _model: ModelBinding

    if TYPE_CHECKING:

        def _check_writable(self) -> object: ...

        def _write_templates(
            self,
            identity_id: str,
            vectors: np.ndarray,
            sources: Sequence[str | None],
            *,
            create: bool,
            metadata: dict[str, Any] | None,
        ) -> tuple[int, ...]: ...

    def enroll_embeddings(
        self,
        identity_id: str,
        embeddings: Any,
        model_id: str,
        *,
        metadata: dict[str, Any] | None = None,
        sources: Sequence[str | None] | None = None,
    ) -> EnrollReport:
        """Create ``identity_id`` with one template per row of ``embeddings`` ((n, dim) or (dim,)).

        Raises ``DuplicateIdentityError`` if it exists, ``ModelMismatchError`` when
        ``model_id``/dim differ from the gallery's model.
        """
        return self._enroll_vectors(identity_id, embeddings, model_id, metadata, sources, create=True)

    def add_embeddings(
        self, identity_id: str, embeddings: Any, model_id: str, *, sources: Sequence[str | None] | None = None
    ) -> EnrollReport:
        """Add templates to an existing identity (``IdentityNotFoundError`` otherwise)."""
        return self._enroll_vectors(identity_id, embeddings, model_id, None, sources, create=False)

    def _enroll_vectors(
        self,
        identity_id: str,
        embeddings: Any,
        model_id: str,
        metadata: dict[str, Any] | None,
        sources: Sequence[str | None] | None,
        *,
        create: bool,
    ) -> EnrollReport:
        self._check_writable()
        identity_id = validate_identity_id(identity_id)
        vecs = self._model.check_embeddings(embeddings, model_id)
        labels = list(sources) if sources is not None else [f"#{i}" for i in range(len(vecs))]
        if len(labels) != len(vecs):
            raise InvalidArgumentError(f"{len(labels)} sources for {len(vecs)} embeddings")
        tids = self._write_templates(identity_id, vecs, labels, create=create, metadata=metadata)
        outcomes = tuple(
            ImageOutcome(index=i, source=str(labels[i]), status="enrolled", template_id=t, faces_found=1)
            for i, t in enumerate(tids)
        )
        return EnrollReport(identity_id=identity_id, outcomes=outcomes, created=create)

    def check_enrollable(self, identity_id: str, *, create: bool) -> str:
        """Validate (and NFC-normalise) ``identity_id`` and fail before any image work.

        ``DuplicateIdentityError`` when ``create`` and it exists, ``IdentityNotFoundError``
        when not ``create`` and it is absent, ``GalleryError`` when read-only or closed.
        Returns the normalised identity id.
        """
        self._check_writable()
        identity_id = validate_identity_id(identity_id)
        exists = self._store.identity_key(identity_id) is not None
        if create and exists:
            raise duplicate_identity(identity_id)
        if not create and not exists:
            raise identity_not_found(identity_id)
        return identity_id

    def enroll(
        self,
        identity_id: str,
        images: Any,
        metadata: dict[str, Any] | None = None,
        *,
        aligned: bool = False,
        strict: bool = False,
        sources: Sequence[str] | None = None,
        quality: QualityPolicy | None = ENROLMENT_POLICY,
    ) -> EnrollReport:
        """Create ``identity_id`` from face images (paths, bytes, BGR arrays, PIL images).

        Each image gives one template; images without a usable face, or whose face fails the
        ``quality`` policy (default: the strict :data:`~facematch.quality.ENROLMENT_POLICY`;
        ``None``: no quality gate), are reported in the returned report (``report.failed``,
        ``low_quality`` outcomes list the failing components). When no image gives a template,
        or ``strict=True`` and any image fails, nothing is written and ``LowQualityError`` /
        ``NoFaceError`` / ``MultipleFacesError`` / ``InvalidImageError`` is raised with the
        report in ``details["report"]``. ``aligned=True`` takes the images as aligned 112x112
        crops. ``sources`` names the images in the report (default: their paths, or ``#i``).
        """
        return self._enroll_images(identity_id, images, metadata, aligned, strict, sources, quality, create=True)

    def add_templates(
        self,
        identity_id: str,
        images: Any,
        *,
        aligned: bool = False,
        strict: bool = False,
        sources: Sequence[str] | None = None,
        quality: QualityPolicy | None = ENROLMENT_POLICY,
    ) -> EnrollReport:
        """Add templates from face images to an existing identity (see :meth:`enroll`)."""
        return self._enroll_images(identity_id, images, None, aligned, strict, sources, quality, create=False)

    def add_faces(
        self,
        identity_id: str,
        images: Any,
        *,
        aligned: bool = False,
        strict: bool = False,
        sources: Sequence[str] | None = None,
    ) -> EnrollReport:
        """Deprecated alias of :meth:`add_templates` (removed in the next release)."""
        warnings.warn("Gallery.add_faces is deprecated; use add_templates", DeprecationWarning, stacklevel=2)
        return self.add_templates(identity_id, images, aligned=aligned, strict=strict, sources=sources)

    def _enroll_images(
        self,
        identity_id: str,
        images: Any,
        metadata: dict[str, Any] | None,
        aligned: bool,
        strict: bool,
        sources: Sequence[str] | None,
        quality: QualityPolicy | None,
        *,
        create: bool,
    ) -> EnrollReport:
        identity_id = self.check_enrollable(identity_id, create=create)
        if metadata is not None:
            dump_metadata(metadata)
        items = as_image_list(images)
        if not items:
            raise InvalidArgumentError("no images given")
        labels = (
            check_sources(sources, len(items))
            if sources is not None
            else [source_label(image, i) for i, image in enumerate(items)]
        )
        matcher = self._model.matcher()
        prepared, embeddings, qualities = prepare_images(matcher, items, aligned=aligned)
        return self.enroll_prepared(
            identity_id,
            prepared,
            embeddings,
            sources=labels,
            model_id=matcher.model_id,
            metadata=metadata,
            create=create,
            strict=strict,
            qualities=qualities,
            quality=quality,
        )

    def enroll_prepared(
        self,
        identity_id: str,
        prepared: Sequence[PreparedImage | FacematchError],
        embeddings: np.ndarray,
        *,
        sources: Sequence[str],
        model_id: str,
        metadata: dict[str, Any] | None = None,
        create: bool,
        strict: bool = False,
        qualities: Sequence[FaceQuality] | None = None,
        quality: QualityPolicy | None = ENROLMENT_POLICY,
    ) -> EnrollReport:
        """Commit an enrolment whose images were prepared (and embedded) elsewhere.

        ``prepared[i]`` is what preparing image ``i`` gave (:func:`~facematch.gallery.enrol.prepare_for_enrolment`):
        a :class:`PreparedImage`, or the ``FacematchError`` it raised (``NoFaceError`` →
        ``no_face``, ``InvalidImageError`` and subclasses → ``invalid_image``,
        ``MultipleFacesError`` → ``multiple_faces``; any other error propagates).
        ``embeddings`` has one row per ``PreparedImage`` item, in order (the embedding of
        its ``crops[0]``), made by ``model_id``; ``qualities`` one
        :class:`~facematch.quality.FaceQuality` per such item (:func:`assess_enrolment`).
        The gallery's multi-face policy applies, then the ``quality`` policy (the one quality
        gate of every enrolment; default the strict enrolment policy, ``None`` for none): a face
        below it is a ``low_quality`` outcome naming each failing component, its value and its
        limit. Without ``qualities`` a policy with limits is refused (``InvalidArgumentError``).
        Every accepted template is written in one store transaction (which re-checks
        duplicate / not-found); what is already stored is untouched by refused images. Raises
        as :meth:`enroll` does when nothing is enrolled (or ``strict`` and any image failed),
        with the report in ``details["report"]``.
        """
        identity_id = self.check_enrollable(identity_id, create=create)
        if metadata is not None and not create:
            raise InvalidArgumentError("metadata is set when an identity is created (see set_metadata)")
        if metadata is not None:
            dump_metadata(metadata)
        if not prepared:
            raise InvalidArgumentError("no images given")
        labels = check_sources(sources, len(prepared))
        outcomes, vectors = plan_enrolment(prepared, embeddings, labels, self.multi_face, qualities, quality)
        report = EnrollReport(identity_id=identity_id, outcomes=tuple(outcomes), created=create)
        if not vectors or (strict and report.failed):
            raise_for(replace(report, created=False))  # nothing was written
        vecs = self._model.check_embeddings(np.stack(vectors), model_id)
        written = [o.source for o in outcomes if o.ok]
        tids = self._write_templates(identity_id, vecs, written, create=create, metadata=metadata)
        return EnrollReport(identity_id=identity_id, outcomes=with_template_ids(outcomes, tids), created=create)


__all__ = [
    "IMAGE_ERRORS",
    "MULTI_FACE_POLICIES",
    "Enrolment",
    "MultiFacePolicy",
    "as_image_list",
    "assess_enrolment",
    "check_sources",
    "outcome_for_error",
    "plan_enrolment",
    "prepare_for_enrolment",
    "prepare_images",
    "raise_for",
    "source_label",
    "with_template_ids",
]
