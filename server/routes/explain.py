"""POST /explain: why two faces are (not) a match, as similarity maps of both faces."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from facematch.explain import explain_prepared
from facematch.matcher import FaceMatcher
from facematch.types import PreparedImage

from ..deps import MatcherDep, StateDep, scoped
from ..inputs import parse_images_request, request_body
from ..pipeline import Pipeline
from ..schemas import ExplainJSON, ExplainParams, ExplainResponse
from . import IMAGE_ERRORS, problems
from .match import VERIFY_FILES

router = APIRouter(tags=["matching"])

EXPLAIN_FILES = VERIFY_FILES  # the same two images as /verify


@router.post(
    "/explain",
    operation_id="explain",
    summary="Why are two faces (not) a match? Similarity maps of both faces",
    response_model=ExplainResponse,
    responses=problems(*IMAGE_ERRORS),
    openapi_extra=request_body(EXPLAIN_FILES, ExplainParams, ExplainJSON),
    dependencies=[scoped("explain")],
)
async def explain(request: Request, state: StateDep, matcher: MatcherDep) -> ExplainResponse:
    """Compare the largest faces of `image1` and `image2` as `/verify` does, and say which parts of
    each face made them similar: per feature cell of each face, its share of the similarity, mapped
    onto the aligned crop and into the original image (RGBA PNGs, base64), and the share of the
    eyes, nose, mouth and the rest.

    `method=decomposition` splits the cosine exactly (for models whose card has an `explain` block;
    every pair is checked: the cells plus the bias term reproduce the similarity within 1e-4, else
    422 `explanation_unavailable`); `occlusion` works for any model; `auto` (default) takes the
    first and falls back to the second, saying why in `fallback_reason`. Same limits as `/verify`.
    """
    parsed = await parse_images_request(request, state.settings, EXPLAIN_FILES, ExplainParams, ExplainJSON)
    p = parsed.params
    matcher.resolve_threshold(p.threshold, p.fmr)  # refuse bad options before any work
    max_side = state.settings.explain_max_png_side
    with state.admission.slot():  # taken once the body is read and checked, as /verify does
        pipe = Pipeline(state, matcher)
        first, second = await pipe.prepare_many([parsed.one("image1"), parsed.one("image2")], ["image1", "image2"])

        def work(m: FaceMatcher, a: PreparedImage, b: PreparedImage) -> ExplainResponse:
            t = time.perf_counter()
            expl = explain_prepared(m, a, b, method=p.method, threshold=p.threshold, fmr=p.fmr)
            pipe.embed_s += time.perf_counter() - t
            return ExplainResponse.of(expl, pipe.timings(), max_side)

        return await pipe.run(work, matcher, first, second)


__all__ = ["router"]
