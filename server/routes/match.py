"""POST /verify, /identify, /detect and /embed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from fastapi import APIRouter, Request

from facematch.errors import NoFaceError
from facematch.types import IdentifyResult

from ..deps import GalleryDep, MatcherDep, MatchKey, StateDep, scoped
from ..errors import EmbedDisabledError
from ..inputs import FileField, parse_images_request, request_body
from ..pipeline import Pipeline
from ..schemas import (
    DetectJSON,
    DetectParams,
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
    QualityFailureOut,
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
    `image1`, `image2`, or JSON with both images base64-encoded. Each face's quality is in the
    answer; a face below the probe quality policy (lenient by default; `quality_policy`,
    `min_quality`, `min_face_size`, ... override it) is refused with 422 `low_quality`.
    """
    parsed = await parse_images_request(request, state.settings, VERIFY_FILES, VerifyParams, VerifyJSON)
    p = parsed.params
    fmr = p.target_fmr()
    matcher.resolve_threshold(p.threshold, fmr)  # refuse bad options before any work
    gate = p.quality_gate("probe")
    with state.admission.slot():  # taken once the body is read and checked
        pipe = Pipeline(state, matcher)
        first, second = await pipe.prepare_many([parsed.one("image1"), parsed.one("image2")], ["image1", "image2"])
        emb, norms = await pipe.embed_with_norms(np.concatenate([first.crops, second.crops]))
        q1 = (await pipe.run(matcher.assess, first, norms[:1]))[0]
        q2 = (await pipe.run(matcher.assess, second, norms[1:2]))[0]
    gate.require(q1, "image1")
    gate.require(q2, "image2")
    result = matcher.compare(emb[0], emb[1], threshold=p.threshold, fmr=fmr, face1=first.face(0), face2=second.face(0))
    return VerifyResponse.of(replace(result, quality1=q1, quality2=q2), pipe.timings())


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

    Each face's quality is in the answer. The probe quality policy (lenient by default;
    `quality_policy`, `min_quality`, ... override it) refuses the largest face with 422
    `low_quality`; with `faces=all` a face below it is not searched and lists its `refused` reasons.
    """
    parsed = await parse_images_request(request, state.settings, IMAGE_FILE, IdentifyParams, IdentifyJSON)
    p = parsed.params
    reads_gallery = principal.allows("enroll")
    gate = p.quality_gate("probe")
    with state.admission.slot():
        pipe = Pipeline(state, matcher)
        prep = await pipe.prepare(parsed.one("image"), p.faces)
        emb, norms = await pipe.embed_with_norms(prep.crops)
        quality = await pipe.run(matcher.assess, prep, norms)
        checks = [gate.check(q) for q in quality]
        if p.faces == "largest":
            gate.require(quality[0], "image")
        searched = [i for i, c in enumerate(checks) if c.passed]

        def search() -> list[FaceIdentification]:
            state.maybe_refresh(gallery)
            found = (
                gallery.identify_embeddings(emb[searched], matcher.model_id, k=p.k, threshold=p.threshold, fpir=p.fpir)
                if searched
                else []
            )
            by_face = dict(zip(searched, found, strict=True))
            out = []
            for i, check in enumerate(checks):
                if i in by_face:
                    r = replace(by_face[i], face=prep.face(i), quality=quality[i])
                    out.append(FaceIdentification.of(r, full=reads_gallery, floor=state.settings.candidate_floor))
                    continue
                thr, target = gallery.resolve_threshold(p.threshold, p.fpir)
                refused = IdentifyResult((), thr, True, face=prep.face(i), target_fpir=target, quality=quality[i])
                reasons = [QualityFailureOut(**f.to_dict()) for f in check.failures]
                out.append(FaceIdentification.of(refused).model_copy(update={"refused": reasons}))
            return out

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
    openapi_extra=request_body(IMAGE_FILE, DetectParams, DetectJSON),
    dependencies=[scoped("match")],
)
async def detect(request: Request, state: StateDep, matcher: MatcherDep) -> DetectResponse:
    """Boxes, detection scores, 5 landmarks and quality of the faces in an image, largest first
    (at most `max_faces_per_image`; `truncated` says when there were more). No face is not an error here.
    Quality (the default; `quality=false` skips it) aligns and embeds every face: one embedding per face."""
    parsed = await parse_images_request(request, state.settings, IMAGE_FILE, DetectParams, DetectJSON)
    data = parsed.one("image")
    with state.admission.slot():
        pipe = Pipeline(state, matcher)
        if not parsed.params.quality:
            (width, height), dets = await pipe.detect(data)
            kept = dets[: state.settings.max_faces_per_image]
            faces, total = [FaceOut.from_face(f) for f in kept], len(dets)
        else:
            try:
                prep = await pipe.prepare(data, "all")
            except NoFaceError:
                (width, height), _ = await pipe.detect(data)
                faces, total = [], 0
            else:
                _, norms = await pipe.embed_with_norms(prep.crops)
                quality = await pipe.run(matcher.assess, prep, norms)
                faces = [FaceOut.from_face(f, q) for f, q in zip(prep.faces, quality, strict=True)]
                (width, height), total = prep.image_size, prep.faces_total
    return DetectResponse(
        faces=faces,
        faces_total=total,
        truncated=total > len(faces),
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
