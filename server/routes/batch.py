"""POST /verify/batch: many pairs over a set of images, each image prepared and embedded once.

The server composes the SDK's steps as ``FaceMatcher.verify_many`` does, deciding only where
each runs: every image some pair uses is prepared in the worker threads side by side
(``Pipeline.prepare_each``, each image's error kept in its place), all the crops go through the
shared micro-batcher, each image's face is assessed and checked against the request's probe
quality policy (:func:`facematch.batch.embedded_images` with a gate: a face below it is a
``LowQualityError`` in that image's place), and :func:`facematch.batch.verify_pairs` decides
every pair (a failed or low-quality image fails only the pairs that use it).
"""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Request

from facematch.batch import check_index_pairs, embedded_images, used_images, verify_pairs
from facematch.errors import FacematchError
from facematch.quality import assess_each
from facematch.types import PreparedImage

from ..deps import MatcherDep, StateDep, scoped
from ..errors import InvalidRequestError, TooManyPairsError
from ..inputs import FileField, parse_images_request, request_body
from ..pipeline import Pipeline
from ..schemas import VerifyBatchForm, VerifyBatchJSON, VerifyBatchResponse
from . import IMAGE_ERRORS, problems

router = APIRouter(tags=["matching"])

BATCH_FILES = (
    FileField("images", multiple=True, description="the distinct images, in the order `pairs` indexes them"),
)


@router.post(
    "/verify/batch",
    operation_id="verifyBatch",
    summary="Compare many pairs of faces; each image is processed once",
    response_model=VerifyBatchResponse,
    responses=problems(*IMAGE_ERRORS),
    openapi_extra=request_body(
        BATCH_FILES,
        VerifyBatchForm,
        VerifyBatchJSON,
        form_example={"images": ["a.jpg", "b.jpg", "c.jpg"], "pairs": "[[0, 1], [0, 2], [1, 2]]", "fmr": 0.001},
    ),
    dependencies=[scoped("match")],
)
async def verify_batch(request: Request, state: StateDep, matcher: MatcherDep) -> VerifyBatchResponse:
    """Send the distinct images once (repeated multipart `images` parts, or base64 strings in JSON)
    and the pairs as index pairs into them (`pairs`: `[[0, 1], [0, 2]]`, a JSON text field in
    multipart). Each pair gets the same answer `/verify` would give (largest face of each image, one
    threshold for the batch, each face with its quality), or a per-pair `error` when one of its images
    has no usable face, does not decode, or has a face below the probe quality policy (`low_quality`,
    with `reasons` listing each failing component; lenient by default, `quality_policy`, `min_quality`,
    `min_face_size`, ... override it for the whole batch); the other pairs are unaffected. At most
    `max_batch_images` images and `max_batch_pairs` pairs (413 `too_many_images` / `too_many_pairs`)."""
    settings = state.settings
    parsed = await parse_images_request(
        request, settings, BATCH_FILES, VerifyBatchForm, VerifyBatchJSON, max_images=settings.max_batch_images
    )
    p = parsed.params
    images = parsed.images["images"]
    if len(p.pairs) > settings.max_batch_pairs:
        raise TooManyPairsError(f"more than {settings.max_batch_pairs} pairs in one request")
    try:
        pairs = check_index_pairs(p.pairs, len(images))
    except FacematchError as exc:
        loc = ["body", "pairs", str(exc.details.get("pair", 0))]
        raise InvalidRequestError(exc.message, errors=[{"loc": loc, "msg": exc.message, "type": "index"}]) from exc
    fmr = p.target_fmr()
    matcher.resolve_threshold(p.threshold, fmr)  # refuse bad options before any work
    gate = p.quality_gate("probe")
    used = used_images(pairs, len(images))
    wanted = [b for b, u in zip(images, used, strict=True) if u]
    with state.admission.slot():  # taken once the body is read and checked
        pipe = Pipeline(state, matcher)
        prepared_used = iter(await pipe.prepare_each(wanted, "largest"))
        prepared: list[PreparedImage | FacematchError | None] = [next(prepared_used) if u else None for u in used]
        crops = [x.crops[:1] for x in prepared if isinstance(x, PreparedImage)]
        if crops:
            stacked = np.concatenate(crops)
            step = settings.batch_max_size  # the batcher's pending bound is a multiple of this
            parts = await asyncio.gather(
                *(pipe.embed_with_norms(stacked[i : i + step]) for i in range(0, len(stacked), step))
            )
            embeddings = np.concatenate([e for e, _ in parts])
            norms = np.concatenate([n for _, n in parts])
        else:
            embeddings, norms = np.zeros((0, matcher.dim), np.float32), np.zeros((0,), np.float32)
        qualities = await pipe.run(assess_each, matcher, prepared, norms)
    embedded = embedded_images(prepared, embeddings, matcher.model_id, qualities, gate)
    result = verify_pairs(matcher, pairs, embedded, threshold=p.threshold, fmr=fmr)
    return VerifyBatchResponse.of(result, pipe.timings())


__all__ = ["router"]
