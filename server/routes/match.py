"""POST /verify, /identify, /detect and /embed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from fastapi import APIRouter, Request

from ..deps import GalleryDep, MatcherDep, MatchKey, StateDep, scoped
from ..errors import EmbedDisabledError
from ..inputs import FileField, parse_images_request, request_body
from ..pipeline import Pipeline
from ..schemas import (
    DetectJSON,
    DetectResponse,
    EmbeddingOut,
    EmbedJSON,
    EmbedParams,
    EmbedResponse,
    FaceIdentification,
    FaceOut,
    IdentifyJSON,
    IdentifyParams,
    IdentifyResponse,
    ImageSize,
    NoParams,
    VerifyJSON,
    VerifyParams,
    VerifyResponse,
)
from . import IMAGE_ERRORS, problems

router = APIRouter(tags=["matching"])

VERIFY_FILES = (FileField("image1", description="first image"), FileField("image2", description="second image"))
IMAGE_FILE = (FileField("image"),)


@router.post(
    "/verify",
    operation_id="verify",
    summary="Are the faces in two images the same person?",
    response_model=VerifyResponse,
    responses=problems(*IMAGE_ERRORS),
    openapi_extra=request_body(VERIFY_FILES, VerifyParams, VerifyJSON),
    dependencies=[scoped("match")],
)
async def verify(request: Request, state: StateDep, matcher: MatcherDep) -> VerifyResponse:
    """Compare the largest face of `image1` with the largest face of `image2`.

    The threshold is `threshold` if given, else the model card's calibrated threshold at
    false-match rate `fmr` (default: the card's default FMR). Send two multipart file parts
    `image1`, `image2`, or JSON with both images base64-encoded.
    """
    parsed = await parse_images_request(request, state.settings, VERIFY_FILES, VerifyParams, VerifyJSON)
    p = parsed.params
    fmr = p.target_fmr()
    matcher.resolve_threshold(p.threshold, fmr)  # refuse bad options before any work
    with state.admission.slot():  # taken once the body is read and checked
        pipe = Pipeline(state, matcher)
        first, second = await pipe.prepare_many([parsed.one("image1"), parsed.one("image2")], ["image1", "image2"])
        emb = await pipe.embed(np.concatenate([first.crops, second.crops]))
    result = matcher.compare(emb[0], emb[1], threshold=p.threshold, fmr=fmr, face1=first.face(0), face2=second.face(0))
    return VerifyResponse.of(result, pipe.timings())


@router.post(
    "/identify",
    operation_id="identify",
    summary="Who is this? Open-set search of the gallery",
    response_model=IdentifyResponse,
    responses=problems(*IMAGE_ERRORS, 404),
    openapi_extra=request_body(IMAGE_FILE, IdentifyParams, IdentifyJSON),
)
async def identify(
    request: Request,
    state: StateDep,
    matcher: MatcherDep,
    gallery: GalleryDep,
    principal: MatchKey,
) -> IdentifyResponse:
    """Rank gallery identities for the largest face (or `faces=all`: every face, largest first).

    Each face gets the top-`k` identities (`k` at most the server's `max_k`) with similarity
    and estimated false-match rate, and an explicit `is_unknown` when the best is below the
    threshold: `threshold` if given, else the one that keeps the false-positive
    identification rate at `fpir` (default: the server's `default_fpir`) for the current
    gallery size. Keys without the `enroll` scope see no `metadata` (null), and only the
    candidates at or above the threshold (or the server's `candidate_floor`): an unknown
    probe then has no candidates.
    """
    parsed = await parse_images_request(request, state.settings, IMAGE_FILE, IdentifyParams, IdentifyJSON)
    p = parsed.params
    reads_gallery = principal.allows("enroll")
    with state.admission.slot():
        pipe = Pipeline(state, matcher)
        prep = await pipe.prepare(parsed.one("image"), p.faces)
        emb = await pipe.embed(prep.crops)

        def search() -> list[FaceIdentification]:
            state.maybe_refresh(gallery)
            results = gallery.identify_embeddings(emb, matcher.model_id, k=p.k, threshold=p.threshold, fpir=p.fpir)
            return [
                FaceIdentification.of(
                    replace(r, face=prep.face(i)), full=reads_gallery, floor=state.settings.candidate_floor
                )
                for i, r in enumerate(results)
            ]

        answers = await pipe.search(search)
    return IdentifyResponse(
        results=answers,
        faces_total=prep.faces_total,
        truncated=prep.truncated,
        gallery_size=len(gallery),
        model_id=matcher.model_id,
        timings=pipe.timings(),
    )


@router.post(
    "/detect",
    operation_id="detect",
    summary="Find every face in an image",
    response_model=DetectResponse,
    responses=problems(*IMAGE_ERRORS),
    openapi_extra=request_body(IMAGE_FILE, NoParams, DetectJSON),
    dependencies=[scoped("match")],
)
async def detect(request: Request, state: StateDep, matcher: MatcherDep) -> DetectResponse:
    """Boxes, detection scores and 5 landmarks of the faces in an image, largest first
    (at most `max_faces_per_image`; `truncated` says when there were more). No face is not an error here."""
    parsed = await parse_images_request(request, state.settings, IMAGE_FILE, NoParams, DetectJSON)
    with state.admission.slot():
        pipe = Pipeline(state, matcher)
        (width, height), dets = await pipe.detect(parsed.one("image"))
    kept = dets[: state.settings.max_faces_per_image]
    return DetectResponse(
        faces=[FaceOut.from_face(f) for f in kept],
        faces_total=len(dets),
        truncated=len(dets) > len(kept),
        image=ImageSize(width=width, height=height),
        timings=pipe.timings(),
    )


@router.post(
    "/embed",
    operation_id="embed",
    summary="Face embeddings (biometric data; disabled by default)",
    response_model=EmbedResponse,
    responses=problems(*IMAGE_ERRORS, 404),
    openapi_extra=request_body(IMAGE_FILE, EmbedParams, EmbedJSON),
    dependencies=[scoped("embed")],
)
async def embed(request: Request, state: StateDep, matcher: MatcherDep) -> EmbedResponse:
    """Unit-norm embeddings of the largest face (or every face). The only endpoint that returns
    templates: it answers 404 `embed_disabled` unless the server runs with `FACEMATCH_ENABLE_EMBED=true`,
    and needs a key with the `embed` scope."""
    if not state.settings.enable_embed:
        raise EmbedDisabledError("the embed endpoint is disabled; enable it with FACEMATCH_ENABLE_EMBED=true")
    parsed = await parse_images_request(request, state.settings, IMAGE_FILE, EmbedParams, EmbedJSON)
    with state.admission.slot():
        pipe = Pipeline(state, matcher)
        prep = await pipe.prepare(parsed.one("image"), parsed.params.faces)
        emb = await pipe.embed(prep.crops)
    return EmbedResponse(
        model_id=matcher.model_id,
        dim=int(emb.shape[1]),
        embeddings=[
            EmbeddingOut(face=FaceOut.of(prep.face(i)), vector=[float(v) for v in e]) for i, e in enumerate(emb)
        ],
        faces_total=prep.faces_total,
        truncated=prep.truncated,
        timings=pipe.timings(),
    )


__all__ = ["router"]
