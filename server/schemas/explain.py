"""Request and response models of POST /explain."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import Field

from facematch.explain import Explanation, FaceExplanation

from .common import _FACE_EXAMPLE, _TIMINGS_EXAMPLE, B64_EXAMPLE, FaceOut, Timings, _examples, _Out
from .match import ThresholdParams


class ExplainParams(ThresholdParams):
    """Options of POST /explain (multipart text fields or JSON members): the method and the 1:1 threshold."""

    method: Literal["auto", "decomposition", "occlusion"] = Field(
        default="auto",
        description="`decomposition`: the exact split of the cosine over the last feature map (models whose card "
        "has an `explain` block; checked on every pair); `occlusion`: the similarity lost when each cell is covered "
        "(any model, about 100 extra embeddings); `auto`: the first, else the second",
    )


class ExplainJSON(ExplainParams):
    """POST /explain as JSON: both images base64-encoded."""

    image1: str = Field(min_length=1, description="base64-encoded image (a data: URL prefix is accepted)")
    image2: str = Field(min_length=1, description="base64-encoded image")

    model_config = _examples({"image1": B64_EXAMPLE, "image2": B64_EXAMPLE, "method": "auto"})


class RegionShareOut(_Out):
    region: Literal["eyes", "nose", "mouth", "rest"] = Field(description="face region the share is of")
    contribution: float = Field(description="sum of the region's cell values (similarity units)")
    share: float = Field(description="contribution / sum of |contribution| over the four regions")

    model_config = _examples({"region": "eyes", "contribution": 0.134, "share": 0.19})


_REGIONS_EXAMPLE: list[dict[str, Any]] = [
    {"region": "eyes", "contribution": 0.134, "share": 0.19},
    {"region": "nose", "contribution": 0.144, "share": 0.2},
    {"region": "mouth", "contribution": 0.066, "share": 0.09},
    {"region": "rest", "contribution": 0.375, "share": 0.52},
]
_PNG_EXAMPLE = B64_EXAMPLE
_CELLS_EXAMPLE = [[0.002, 0.004, 0.01], [0.013, 0.113, 0.02], [0.003, 0.026, 0.006]]  # H rows of W (7x7 for w600k)
_EXPLAINED_EXAMPLE: dict[str, Any] = {
    "face": _FACE_EXAMPLE,
    "cells": _CELLS_EXAMPLE,
    "bias": 0.0106,
    "residual": 3.5e-8,
    "regions": _REGIONS_EXAMPLE,
    "map_crop_png": _PNG_EXAMPLE,
    "map_image_png": _PNG_EXAMPLE,
    "image_box": [377, 103, 642, 368],
}


class ExplainedFaceOut(_Out):
    """One face of the pair with its map."""

    face: FaceOut = Field(description="the face the map is of (box, score, landmarks in the photo's pixels)")
    cells: list[list[float]] = Field(
        description="value of each feature cell, H rows of W: its term of the cosine (decomposition) or the "
        "similarity lost when it is covered (occlusion)"
    )
    bias: float = Field(description="the head's bias term of the cosine (decomposition; 0 for occlusion)")
    residual: float | None = Field(
        default=None, description="|sum of cells + bias - similarity| (decomposition; null for occlusion)"
    )
    regions: list[RegionShareOut] = Field(description="eyes, nose, mouth, rest of the alignment template")
    map_crop_png: str = Field(description="base64 RGBA PNG of the map on the aligned crop (e.g. 112x112)")
    map_image_png: str = Field(
        description="base64 RGBA PNG of the map in the original image over `image_box` (transparent where the "
        "crop does not reach); at original resolution up to `FACEMATCH_EXPLAIN_MAX_PNG_SIDE` pixels, else "
        "downscaled: stretch it over the box"
    )
    image_box: list[int] = Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in original image pixels")

    model_config = _examples(_EXPLAINED_EXAMPLE)

    @classmethod
    def of(cls, side: FaceExplanation, scale: float, max_side: int) -> ExplainedFaceOut:
        from facematch.explain_render import downscaled, heat_rgba, png

        face = FaceOut.of(side.face)
        assert face is not None  # the server always detects
        return cls(
            face=face,
            cells=[[round(float(v), 6) for v in row] for row in side.cells],
            bias=round(side.bias, 6),
            residual=side.residual,
            regions=[RegionShareOut(**r.to_dict()) for r in side.regions],
            map_crop_png=_b64(png(heat_rgba(side.crop_map, scale))),
            map_image_png=_b64(png(heat_rgba(downscaled(side.image_map, max_side), scale))),
            image_box=list(side.image_box),
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ExplainResponse(_Out):
    is_match: bool = Field(description="similarity >= threshold: the two faces are taken for the same person")
    similarity: float = Field(description="cosine similarity of the two faces, in [-1, 1] (as /verify)")
    threshold: float = Field(description="cosine-similarity threshold of the decision")
    target_fmr: float | None = Field(
        default=None, description="false-match rate the threshold was chosen for (None: caller's)"
    )
    model_id: str = Field(description="embedder card id")
    method: Literal["decomposition", "occlusion"] = Field(description="the method that made the maps")
    residual: float | None = Field(
        default=None, description="the decomposition check: the larger side's |sum of cells + bias - similarity|"
    )
    fallback_reason: str | None = Field(
        default=None, description="why method=auto used occlusion (the decomposition was unavailable)"
    )
    colour_scale: float = Field(
        description="the |value| drawn at full colour in both PNGs (RdBu: red for the match, blue against)"
    )
    face1: ExplainedFaceOut = Field(description="the face of image1 with its similarity map")
    face2: ExplainedFaceOut = Field(description="the face of image2 with its similarity map")
    timings: Timings = Field(description="server-side time spent on the request")

    model_config = _examples(
        {
            "is_match": True,
            "similarity": 0.7223,
            "threshold": 0.260985,
            "target_fmr": 0.001,
            "model_id": "w600k_mbf",
            "method": "decomposition",
            "residual": 1.0e-7,
            "fallback_reason": None,
            "colour_scale": 0.113,
            "face1": _EXPLAINED_EXAMPLE,
            "face2": _EXPLAINED_EXAMPLE,
            "timings": {**_TIMINGS_EXAMPLE, "embed_ms": 31.5},
        }
    )

    @classmethod
    def of(cls, expl: Explanation, timings: Timings, max_side: int) -> ExplainResponse:
        from facematch.explain_render import colour_scale

        scale = colour_scale(expl)
        r = expl.result
        return cls(
            is_match=r.is_match,
            similarity=round(r.similarity, 6),
            threshold=round(r.threshold, 6),
            target_fmr=r.target_fmr,
            model_id=r.model_id,
            method=expl.method,
            residual=expl.residual,
            fallback_reason=expl.fallback_reason,
            colour_scale=round(scale, 6),
            face1=ExplainedFaceOut.of(expl.first, scale, max_side),
            face2=ExplainedFaceOut.of(expl.second, scale, max_side),
            timings=timings,
        )


__all__ = ["ExplainJSON", "ExplainParams", "ExplainResponse", "ExplainedFaceOut", "RegionShareOut"]
