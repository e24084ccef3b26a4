"""POST /gallery/identities/{identity_id}/verify: 1:1 against an enrolled identity (scope ``match``).

The same steps as the SDK's ``Gallery.verify``: the identity is looked up first (404 before any
image work), the probe is prepared in the worker threads and embedded through the shared
micro-batcher, its quality is checked against the probe policy (``QualityPolicy.require``, as
``/verify``), and ``Gallery.verify_embedding`` scores it against the identity's templates and
decides at the 1:1 threshold.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from fastapi import APIRouter, Request

from ..deps import GalleryDep, MatcherDep, MatchKey, StateDep
from ..inputs import FileField, parse_images_request, request_body
from ..pipeline import Pipeline
from ..schemas import IdentityVerifyJSON, IdentityVerifyParams, IdentityVerifyResponse
from . import IMAGE_ERRORS, problems
from .gallery import IdentityPath

router = APIRouter(prefix="/gallery", tags=["gallery"])

PROBE = (FileField("image", description="probe image (its largest face is compared)"),)


@router.post(
    "/identities/{identity_id}/verify",
    operation_id="verifyIdentity",
    summary="Is this person the enrolled identity? (1:1 against its templates)",
    response_model=IdentityVerifyResponse,
    responses=problems(*IMAGE_ERRORS, 404, 409),
    openapi_extra=request_body(PROBE, IdentityVerifyParams, IdentityVerifyJSON),
)
async def verify_identity(
    identity_id: IdentityPath,
    request: Request,
    state: StateDep,
    matcher: MatcherDep,
    gallery: GalleryDep,
    principal: MatchKey,
) -> IdentityVerifyResponse:
    """The largest face of `image` is compared with every template of `identity_id`; the template
    similarities are aggregated by the gallery's rule and the decision is taken at a 1:1 threshold:
    `threshold` if given, else the model card's calibrated threshold at `fmr` (default: the card's
    default FMR). Not scaled by the gallery's size: one subject is compared, nothing is searched.
    The identity's `metadata` is returned to keys that also hold the `enroll` scope (null otherwise).
    The probe face's quality is in the answer; a face below the probe quality policy (lenient by
    default; `quality_policy`, `min_quality`, `min_face_size`, ... override it) is refused with
    422 `low_quality` listing the failing components, as on `/verify`.
    404 `identity_not_found` for an unknown id; 409 `no_templates` when the identity has none."""
    parsed = await parse_images_request(request, state.settings, PROBE, IdentityVerifyParams, IdentityVerifyJSON)
    p = parsed.params
    pipe = Pipeline(state, matcher)

    def known() -> None:
        state.maybe_refresh(gallery)
        gallery.get(identity_id)  # 404 before any image work
        gallery.verification_threshold(p.threshold, p.fmr)  # and bad options too

    gate = p.quality_gate("probe")
    await pipe.run(known)
    with state.admission.slot():  # taken once the body is read and checked
        prep = await pipe.prepare(parsed.one("image"))
        emb, norms = await pipe.embed_with_norms(prep.crops[:1])
        quality = (await pipe.run(matcher.assess, prep, norms))[0]
    gate.require(quality, "image")
    verify = functools.partial(
        gallery.verify_embedding, identity_id, emb[0], matcher.model_id, threshold=p.threshold, fmr=p.fmr
    )
    result = await pipe.search(verify)
    reads_gallery = principal.allows("enroll")  # the identity's metadata only for gallery readers
    return IdentityVerifyResponse.of(
        replace(result, face=prep.face(0), quality=quality), pipe.timings(), metadata=reads_gallery
    )


__all__ = ["router"]
