"""Gallery management: create identities, add and remove faces, list, get, delete."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from facematch.errors import TemplateNotFoundError
from facematch.gallery import EnrollReport, Gallery, IdentityInfo

from ..deps import Admitted, GalleryDep, StateDep, scoped
from ..inputs import FileField, parse_images_request, request_body
from ..pipeline import run_in_pool
from ..schemas import (
    AddFacesJSON,
    DeletedFace,
    EnrollForm,
    EnrollJSON,
    EnrollResponse,
    IdentityOut,
    IdentityPage,
    NoParams,
    Timings,
)
from . import problems

router = APIRouter(prefix="/gallery", tags=["gallery"], dependencies=[scoped("enroll")])

IMAGES = (FileField("images", multiple=True, description="face images, one template each"),)
IdentityPath = Annotated[str, Path(min_length=1, max_length=256, description="identity id")]
FaceIdPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="face (template) id")]
WRITE_ERRORS = (401, 403, 404, 409, 413, 415, 422, 429, 503)
READ_ERRORS = (401, 403, 404, 422, 503)


def _identity(info: IdentityInfo) -> IdentityOut:
    return IdentityOut(**info.to_dict())


def _response(report: EnrollReport, started: float) -> EnrollResponse:
    data = report.to_dict()
    return EnrollResponse(**data, timings=Timings(total_ms=round((time.perf_counter() - started) * 1000.0, 3)))


def _enroll(
    gallery: Gallery, identity_id: str, images: list[bytes], metadata: dict[str, Any] | None, sources: list[str]
) -> EnrollReport:
    return gallery.enroll(identity_id, images, metadata, sources=sources)


def _add(gallery: Gallery, identity_id: str, images: list[bytes], sources: list[str]) -> EnrollReport:
    return gallery.add_templates(identity_id, images, sources=sources)


@router.post(
    "/identities",
    status_code=201,
    summary="Create an identity from one or more face images",
    response_model=EnrollResponse,
    responses=problems(*WRITE_ERRORS),
    openapi_extra=request_body(IMAGES, EnrollForm, EnrollJSON),
)
async def create_identity(
    request: Request, state: StateDep, gallery: GalleryDep, _slot: None = Admitted
) -> EnrollResponse:
    """Each image gives one template (its largest face); the report says what each image gave.
    Images without a usable face are reported, not enrolled. When no image gives a template,
    nothing is written and the answer is 422 (`no_face` / `invalid_image`) with the report in
    `details.report`; 409 `duplicate_identity` when the id exists. The 201 is sent only after
    the enrolment is committed to disk."""
    started = time.perf_counter()
    parsed = await parse_images_request(request, state.settings, IMAGES, EnrollForm, EnrollJSON)
    p = parsed.params
    images, names = parsed.images["images"], parsed.names["images"]  # names: upload file names, else "#i"
    report = await run_in_pool(state, _enroll, gallery, p.identity_id, images, p.metadata, names)
    return _response(report, started)


@router.post(
    "/identities/{identity_id}/faces",
    status_code=201,
    summary="Add face images to an identity",
    response_model=EnrollResponse,
    responses=problems(*WRITE_ERRORS),
    openapi_extra=request_body(IMAGES, NoParams, AddFacesJSON),
)
async def add_faces(
    identity_id: IdentityPath, request: Request, state: StateDep, gallery: GalleryDep, _slot: None = Admitted
) -> EnrollResponse:
    """Add templates to an existing identity (404 `identity_not_found` otherwise), with a per-image report."""
    started = time.perf_counter()
    parsed = await parse_images_request(request, state.settings, IMAGES, NoParams, AddFacesJSON)
    images, names = parsed.images["images"], parsed.names["images"]
    report = await run_in_pool(state, _add, gallery, identity_id, images, names)
    return _response(report, started)


@router.get(
    "/identities",
    summary="List identities (cursor pagination)",
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
    response_model=IdentityOut,
    responses=problems(*READ_ERRORS),
)
async def get_identity(identity_id: IdentityPath, state: StateDep, gallery: GalleryDep) -> IdentityOut:
    def one() -> IdentityOut:
        state.maybe_refresh(gallery)
        return _identity(gallery.get(identity_id))

    return await run_in_pool(state, one)


@router.delete(
    "/identities/{identity_id}",
    summary="Delete an identity and all its faces",
    response_model=IdentityOut,
    responses=problems(*READ_ERRORS, 409),
)
async def delete_identity(identity_id: IdentityPath, state: StateDep, gallery: GalleryDep) -> IdentityOut:
    """Returns what was deleted."""
    return _identity(await run_in_pool(state, gallery.delete, identity_id))


@router.delete(
    "/identities/{identity_id}/faces/{face_id}",
    summary="Remove one face (template) from an identity",
    response_model=DeletedFace,
    responses=problems(*READ_ERRORS, 409),
)
async def delete_face(
    identity_id: IdentityPath, face_id: FaceIdPath, state: StateDep, gallery: GalleryDep
) -> DeletedFace:
    """404 `template_not_found` unless `face_id` is one of this identity's templates."""

    def remove() -> DeletedFace:
        if face_id not in gallery.get(identity_id).template_ids:
            raise TemplateNotFoundError(f"identity {identity_id!r} has no face {face_id}", template_id=face_id)
        gallery.remove_template(face_id)
        return DeletedFace(identity_id=identity_id, face_id=face_id)

    return await run_in_pool(state, remove)


__all__ = ["router"]
