"""Gallery management: create identities, add and remove templates, list, get, update metadata, delete.

Enrolment composes the same steps as the SDK's ``Gallery.enroll``, the server deciding only
where each runs: every image is prepared (``prepare_for_enrolment``) in the worker threads
side by side, the crops are embedded through the shared micro-batcher, and
``Gallery.enroll_prepared`` applies the gallery's rules (per-image report, multi-face policy)
and commits in one transaction.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import AfterValidator

from facematch.errors import DuplicateIdentityError, TemplateNotFoundError
from facematch.gallery import Gallery, IdentityInfo
from facematch.gallery.enrol import assess_enrolment, prepare_for_enrolment
from facematch.gallery.store import validate_identity_id
from facematch.matcher import FaceMatcher
from facematch.quality import QualityPolicy
from facematch.types import PreparedImage

from ..deps import GalleryDep, MatcherDep, StateDep, scoped
from ..inputs import FileField, json_body, parse_images_request, parse_json_request, request_body
from ..pipeline import Pipeline, run_in_pool
from ..schemas import (
    IDENTITY_ID_DESC,
    AddTemplatesForm,
    AddTemplatesJSON,
    DeletedTemplate,
    EnrollForm,
    EnrollJSON,
    EnrollResponse,
    IdentityOut,
    IdentityPage,
    IdentityUpdate,
)
from ..state import ServerState
from . import problems

router = APIRouter(prefix="/gallery", tags=["gallery"], dependencies=[scoped("enroll")])

IMAGES = (FileField("images", multiple=True, description="face images, one template each"),)
# the gallery's one identity-id rule (NFC, no control/format/bidi characters, not "." or ".."), as for bodies
IdentityPath = Annotated[
    str, Path(min_length=1, max_length=1024, description=IDENTITY_ID_DESC), AfterValidator(validate_identity_id)
]
TemplateIdPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="template id")]
WRITE_ERRORS = (401, 403, 404, 409, 413, 415, 422, 429, 503)
READ_ERRORS = (401, 403, 404, 422, 503)


def _identity(info: IdentityInfo) -> IdentityOut:
    return IdentityOut(**info.to_dict())


def _deprecated(response: Response, successor: str) -> None:
    """Deprecation headers (RFC 9745 ``Deprecation``, RFC 8288 successor link) on an old ``/faces`` path."""
    response.headers["Deprecation"] = "true"
    response.headers["Link"] = f'<{successor}>; rel="successor-version"'


async def _enrol(
    state: ServerState,
    matcher: FaceMatcher,
    gallery: Gallery,
    identity_id: str,
    images: list[bytes],
    sources: list[str],
    *,
    metadata: dict[str, Any] | None,
    create: bool,
    quality: QualityPolicy,
) -> EnrollResponse:
    with state.admission.slot():  # taken once the body is read and checked
        return await _enrol_admitted(state, matcher, gallery, identity_id, images, sources, metadata, create, quality)


async def _enrol_admitted(
    state: ServerState,
    matcher: FaceMatcher,
    gallery: Gallery,
    identity_id: str,
    images: list[bytes],
    sources: list[str],
    metadata: dict[str, Any] | None,
    create: bool,
    quality: QualityPolicy,
) -> EnrollResponse:
    pipe = Pipeline(state, matcher)
    ident = await pipe.run(functools.partial(gallery.check_enrollable, identity_id, create=create))
    prepared = await pipe.prepare_each(images, step=functools.partial(prepare_for_enrolment, matcher, aligned=False))
    faces = [p for p in prepared if isinstance(p, PreparedImage)]
    if faces:
        embeddings, norms = await pipe.embed_with_norms(np.concatenate([p.crops[:1] for p in faces]))
    else:
        embeddings, norms = np.zeros((0, matcher.dim), np.float32), np.zeros((0,), np.float32)
    qualities = await pipe.run(assess_enrolment, matcher, prepared, norms)
    report = await pipe.run(
        functools.partial(
            gallery.enroll_prepared,
            ident,
            prepared,
            embeddings,
            sources=sources,
            model_id=matcher.model_id,
            metadata=metadata,
            create=create,
            qualities=qualities,
            quality=quality,
        )
    )
    return EnrollResponse(**report.to_dict(), timings=pipe.timings())


@router.post(
    "/identities",
    status_code=201,
    summary="Create an identity from one or more face images",
    operation_id="createIdentity",
    response_model=EnrollResponse,
    responses=problems(*WRITE_ERRORS),
    openapi_extra=request_body(IMAGES, EnrollForm, EnrollJSON),
)
async def create_identity(
    request: Request, state: StateDep, matcher: MatcherDep, gallery: GalleryDep
) -> EnrollResponse:
    """Each image gives one template (its largest face); the report says what each image gave.
    Images without a usable face, or whose face is below the enrolment quality policy (strict
    by default; `quality_policy`, `min_quality`, `min_face_size`, ... override it), are reported,
    not enrolled (`low_quality` outcomes list each failing component, its value and its limit).
    When no image gives a template, nothing is written and the answer is 422 (`low_quality` with
    `details.reasons`, `no_face`, `invalid_image`) with the report in `details.report`; 409
    `duplicate_identity` when the id exists. The 201 is sent only after the enrolment is
    committed to disk."""
    parsed = await parse_images_request(request, state.settings, IMAGES, EnrollForm, EnrollJSON)
    p = parsed.params
    gate = p.quality_gate("enrolment")
    images, names = parsed.images["images"], parsed.names["images"]  # names: upload file names, else "#i"
    try:
        return await _enrol(
            state, matcher, gallery, p.identity_id, images, names, metadata=p.metadata, create=True, quality=gate
        )
    except DuplicateIdentityError as exc:  # the SDK's message, with the action named as this API spells it
        raise DuplicateIdentityError(
            f"identity {p.identity_id!r} already exists; add templates to it with "
            f"POST /gallery/identities/{p.identity_id}/templates",
            **exc.details,
        ) from exc


async def _add_templates(
    identity_id: str, request: Request, state: ServerState, matcher: FaceMatcher, gallery: Gallery
) -> EnrollResponse:
    parsed = await parse_images_request(request, state.settings, IMAGES, AddTemplatesForm, AddTemplatesJSON)
    images, names = parsed.images["images"], parsed.names["images"]
    gate = parsed.params.quality_gate("enrolment")
    return await _enrol(state, matcher, gallery, identity_id, images, names, metadata=None, create=False, quality=gate)


@router.post(
    "/identities/{identity_id}/templates",
    status_code=201,
    summary="Add templates (face images) to an identity",
    operation_id="addTemplates",
    response_model=EnrollResponse,
    responses=problems(*WRITE_ERRORS),
    openapi_extra=request_body(IMAGES, AddTemplatesForm, AddTemplatesJSON),
)
async def add_templates(
    identity_id: IdentityPath,
    request: Request,
    state: StateDep,
    matcher: MatcherDep,
    gallery: GalleryDep,
) -> EnrollResponse:
    """Add one template per image to an existing identity (404 `identity_not_found` otherwise), with a
    per-image report; the same quality gate as creating an identity."""
    return await _add_templates(identity_id, request, state, matcher, gallery)


@router.post(
    "/identities/{identity_id}/faces",
    status_code=201,
    operation_id="addTemplatesDeprecated",
    response_model=EnrollResponse,
    include_in_schema=False,
    deprecated=True,
)
async def add_templates_deprecated(
    identity_id: IdentityPath,
    request: Request,
    response: Response,
    state: StateDep,
    matcher: MatcherDep,
    gallery: GalleryDep,
) -> EnrollResponse:
    """Deprecated alias of `POST /gallery/identities/{identity_id}/templates` (removed in the next release)."""
    _deprecated(response, "templates")
    return await _add_templates(identity_id, request, state, matcher, gallery)


@router.get(
    "/identities",
    summary="List identities (cursor pagination)",
    operation_id="listIdentities",
    response_model=IdentityPage,
    responses=problems(*READ_ERRORS),
)
async def list_identities(
    state: StateDep,
    gallery: GalleryDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="identities per page")] = 50,
    cursor: Annotated[str | None, Query(max_length=2048, description="next_cursor of the previous page")] = None,
) -> IdentityPage:
    """Identities ordered by id. Pass `next_cursor` back as `cursor` for the next page."""

    def page() -> IdentityPage:
        state.maybe_refresh(gallery)
        result = gallery.list_identities(limit=limit, cursor=cursor)
        return IdentityPage(items=[_identity(i) for i in result.items], next_cursor=result.next_cursor)

    return await run_in_pool(state, page)


@router.get(
    "/identities/{identity_id}",
    summary="One identity",
    operation_id="getIdentity",
    response_model=IdentityOut,
    responses=problems(*READ_ERRORS),
)
async def get_identity(identity_id: IdentityPath, state: StateDep, gallery: GalleryDep) -> IdentityOut:
    def one() -> IdentityOut:
        state.maybe_refresh(gallery)
        return _identity(gallery.get(identity_id))

    return await run_in_pool(state, one)


@router.patch(
    "/identities/{identity_id}",
    summary="Update an identity's metadata",
    operation_id="updateIdentity",
    response_model=IdentityOut,
    responses=problems(*READ_ERRORS, 409, 413, 415),
    openapi_extra=json_body(IdentityUpdate),
)
async def update_identity(
    identity_id: IdentityPath, request: Request, state: StateDep, gallery: GalleryDep
) -> IdentityOut:
    """Replace the identity's metadata with `metadata` (a JSON object, stored as given; send the whole
    object: members left out are dropped). Templates are unchanged. Returns the updated identity."""
    update = await parse_json_request(request, IdentityUpdate)
    return _identity(await run_in_pool(state, gallery.set_metadata, identity_id, update.metadata))


@router.delete(
    "/identities/{identity_id}",
    summary="Delete an identity and all its templates",
    operation_id="deleteIdentity",
    response_model=IdentityOut,
    responses=problems(*READ_ERRORS, 409),
)
async def delete_identity(identity_id: IdentityPath, state: StateDep, gallery: GalleryDep) -> IdentityOut:
    """Returns what was deleted."""
    return _identity(await run_in_pool(state, gallery.delete, identity_id))


def _remove_template(gallery: Gallery, identity_id: str, template_id: int) -> DeletedTemplate:
    info = gallery.get(identity_id)  # validates (and NFC-normalises) the id
    if template_id not in info.template_ids:
        raise TemplateNotFoundError(
            f"identity {info.identity_id!r} has no template {template_id}", template_id=template_id
        )
    gallery.remove_template(template_id)
    return DeletedTemplate(identity_id=info.identity_id, template_id=template_id)


@router.delete(
    "/identities/{identity_id}/templates/{template_id}",
    summary="Remove one template from an identity",
    operation_id="deleteTemplate",
    response_model=DeletedTemplate,
    responses=problems(*READ_ERRORS, 409),
)
async def delete_template(
    identity_id: IdentityPath, template_id: TemplateIdPath, state: StateDep, gallery: GalleryDep
) -> DeletedTemplate:
    """404 `template_not_found` unless `template_id` is one of this identity's templates."""
    return await run_in_pool(state, _remove_template, gallery, identity_id, template_id)


@router.delete(
    "/identities/{identity_id}/faces/{template_id}",
    operation_id="deleteTemplateDeprecated",
    response_model=DeletedTemplate,
    include_in_schema=False,
    deprecated=True,
)
async def delete_template_deprecated(
    identity_id: IdentityPath, template_id: TemplateIdPath, response: Response, state: StateDep, gallery: GalleryDep
) -> DeletedTemplate:
    """Deprecated alias of `DELETE /gallery/identities/{identity_id}/templates/{template_id}`."""
    _deprecated(response, f"templates/{template_id}")
    return await run_in_pool(state, _remove_template, gallery, identity_id, template_id)


__all__ = ["router"]
