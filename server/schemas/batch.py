"""Request and response models of POST /verify/batch."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, Json

from facematch.types import PairResult, VerifyBatchResult

from .common import (
    _FACE_EXAMPLE,
    _TIMINGS_EXAMPLE,
    B64_EXAMPLE,
    FaceOut,
    QualityFailureOut,
    Timings,
    _examples,
    _Out,
)
from .match import VerifyParams

IndexPair = Annotated[
    list[Annotated[int, Field(ge=0)]],
    Field(min_length=2, max_length=2, description="two indices into `images`: [image1, image2]"),
]
PAIRS_DESC = "the pairs to compare, as index pairs into `images` ([[0, 1], [0, 2], ...]); an image may be in many pairs"


class VerifyBatchForm(VerifyParams):
    """Text fields of a multipart batch verification (the images are repeated `images` file parts)."""

    pairs: Json[list[IndexPair]] = Field(description=f"JSON text: {PAIRS_DESC}")


class VerifyBatchJSON(VerifyParams):
    """POST /verify/batch as JSON: the distinct images base64-encoded, and index pairs into them."""

    images: list[str] = Field(
        min_length=1, description="base64-encoded images (each distinct image once; pairs refer to them by index)"
    )
    pairs: list[IndexPair] = Field(min_length=1, description=PAIRS_DESC)

    model_config = _examples(
        {"images": [B64_EXAMPLE, B64_EXAMPLE, B64_EXAMPLE], "pairs": [[0, 1], [0, 2], [1, 2]], "fmr": 0.001},
        strict=True,
    )


class PairErrorOut(_Out):
    """Why a pair has no decision: the error of its first image that could not be used."""

    code: str = Field(
        description="stable error code, as in problem+json (`no_face`, `invalid_image`, `low_quality`, ...)"
    )
    detail: str = Field(description="human-readable message naming the side (`image1: no face found ...`)")
    reasons: list[QualityFailureOut] | None = Field(
        default=None, description="`low_quality` only: each failing component, its value and its limit"
    )

    model_config = _examples({"code": "no_face", "detail": "image2: no face found in the image"})


_PAIR_OK: dict[str, Any] = {
    "index": 0,
    "image1": 0,
    "image2": 1,
    "is_match": True,
    "similarity": 0.7093,
    "face1": _FACE_EXAMPLE,
    "face2": _FACE_EXAMPLE,
    "error": None,
}
_PAIR_FAILED: dict[str, Any] = {
    "index": 1,
    "image1": 0,
    "image2": 2,
    "is_match": None,
    "similarity": None,
    "face1": None,
    "face2": None,
    "error": {"code": "no_face", "detail": "image2: no face found in the image"},
}


class PairOut(_Out):
    """One pair's answer: the decision, or the error that kept it from one (`error`)."""

    index: int = Field(description="position of the pair in `pairs`")
    image1: int = Field(description="index of the pair's first image in `images`")
    image2: int = Field(description="index of the pair's second image in `images`")
    is_match: bool | None = Field(
        default=None, description="similarity >= threshold: the same person at the batch's threshold (null on error)"
    )
    similarity: float | None = Field(
        default=None, description="cosine similarity of the two faces, in [-1, 1] (null on error)"
    )
    face1: FaceOut | None = Field(default=None, description="the face used in image1 (null on error)")
    face2: FaceOut | None = Field(default=None, description="the face used in image2 (null on error)")
    error: PairErrorOut | None = Field(default=None, description="null when the pair was decided")

    model_config = _examples(_PAIR_OK, _PAIR_FAILED)

    @classmethod
    def of(cls, pair: PairResult) -> PairOut:
        if pair.result is None:
            assert pair.error is not None
            reasons = pair.error.details.get("reasons")
            err = PairErrorOut(
                code=pair.error.code,
                detail=pair.error.message,
                reasons=[QualityFailureOut(**r) for r in reasons] if isinstance(reasons, list) else None,
            )
            return cls(index=pair.index, image1=pair.image1, image2=pair.image2, error=err)
        r = pair.result
        return cls(
            index=pair.index,
            image1=pair.image1,
            image2=pair.image2,
            is_match=r.is_match,
            similarity=round(r.similarity, 6),
            face1=FaceOut.of(r.face1, r.quality1),
            face2=FaceOut.of(r.face2, r.quality2),
        )


class VerifyBatchResponse(_Out):
    results: list[PairOut] = Field(description="one per pair, in the order of `pairs`")
    threshold: float = Field(description="cosine-similarity threshold every pair was decided at")
    target_fmr: float | None = Field(
        default=None, description="false-match rate the threshold was chosen for (null: the caller's threshold)"
    )
    model_id: str = Field(description="embedder card id")
    images: int = Field(description="distinct images prepared (each once, however many pairs use it)")
    failed: int = Field(description="pairs with an error instead of a decision")
    timings: Timings = Field(description="server-side time spent on the request")

    model_config = _examples(
        {
            "results": [_PAIR_OK, _PAIR_FAILED],
            "threshold": 0.260985,
            "target_fmr": 0.001,
            "model_id": "w600k_mbf",
            "images": 3,
            "failed": 1,
            "timings": _TIMINGS_EXAMPLE,
        }
    )

    @classmethod
    def of(cls, result: VerifyBatchResult, timings: Timings) -> VerifyBatchResponse:
        return cls(
            results=[PairOut.of(p) for p in result.pairs],
            threshold=round(result.threshold, 6),
            target_fmr=result.target_fmr,
            model_id=result.model_id,
            images=result.images,
            failed=len(result.failed),
            timings=timings,
        )


__all__ = ["PairErrorOut", "PairOut", "VerifyBatchForm", "VerifyBatchJSON", "VerifyBatchResponse"]
