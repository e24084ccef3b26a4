"""Request and response models of POST /verify, /identify, /detect and /embed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from facematch.errors import InvalidArgumentError
from facematch.types import Candidate, IdentifyResult, VerifyResult

from .common import (
    _CANDIDATE_EXAMPLE,
    _FACE_EXAMPLE,
    _TIMINGS_EXAMPLE,
    B64_EXAMPLE,
    FaceOut,
    ImageSize,
    QualityFailureOut,
    QualityParams,
    Timings,
    _examples,
    _In,
    _Out,
)


# ---- verify ---------------------------------------------------------------------------------
class ThresholdParams(_In):
    """The 1:1 decision options: a cosine threshold, or a target false-match rate."""

    threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="cosine threshold; give it or fmr, not both"
    )
    fmr: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="target false-match rate: the threshold is the model card's calibrated one at this rate "
        "(default: the card's default FMR)",
    )


class VerifyParams(ThresholdParams, QualityParams):
    """Options of POST /verify (multipart text fields or JSON members), with the probes' quality gate."""

    far: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="deprecated alias of fmr (the false-match rate); give one of them",
        json_schema_extra={"deprecated": True},
    )

    def target_fmr(self) -> float | None:
        """``fmr``, or the deprecated ``far`` (never both)."""
        if self.far is not None and self.fmr is not None:
            raise InvalidArgumentError("give fmr (or its deprecated alias far), not both")
        return self.fmr if self.far is None else self.far


class VerifyJSON(VerifyParams):
    """POST /verify as JSON: both images base64-encoded."""

    image1: str = Field(min_length=1, description="base64-encoded image (a data: URL prefix is accepted)")
    image2: str = Field(min_length=1, description="base64-encoded image")

    model_config = _examples({"image1": B64_EXAMPLE, "image2": B64_EXAMPLE, "fmr": 0.001}, strict=True)


class VerifyResponse(_Out):
    """The 1:1 decision for two images: same person or not, with the evidence."""

    is_match: bool = Field(description="similarity >= threshold: the two faces are taken for the same person")
    similarity: float = Field(
        description="cosine similarity of the two faces' unit-norm embeddings, in [-1, 1] (higher: more alike)"
    )
    threshold: float = Field(description="cosine-similarity threshold of the decision")
    target_fmr: float | None = Field(
        default=None, description="false-match rate the threshold was chosen for (null: the caller's threshold)"
    )
    threshold_extrapolated: bool = Field(
        default=False,
        description="true when the FMR threshold lies beyond the calibration's measured range "
        "(extrapolated from the impostor tail, conservatively), as for /identify",
    )
    model_id: str = Field(description="embedder card id")
    face1: FaceOut = Field(description="the face used in image1 (its largest)")
    face2: FaceOut = Field(description="the face used in image2 (its largest)")
    timings: Timings = Field(description="server-side time spent on the request")

    model_config = _examples(
        {
            "is_match": True,
            "similarity": 0.7093,
            "threshold": 0.260985,
            "target_fmr": 0.001,
            "threshold_extrapolated": False,
            "model_id": "w600k_mbf",
            "face1": _FACE_EXAMPLE,
            "face2": _FACE_EXAMPLE,
            "timings": _TIMINGS_EXAMPLE,
        }
    )

    @classmethod
    def of(cls, result: VerifyResult, timings: Timings) -> VerifyResponse:
        face1, face2 = FaceOut.of(result.face1, result.quality1), FaceOut.of(result.face2, result.quality2)
        assert face1 is not None and face2 is not None  # the server always detects
        return cls(
            is_match=result.is_match,
            similarity=round(result.similarity, 6),
            threshold=round(result.threshold, 6),
            target_fmr=result.target_fmr,
            threshold_extrapolated=result.threshold_extrapolated,
            model_id=result.model_id,
            face1=face1,
            face2=face2,
            timings=timings,
        )


# ---- identify -------------------------------------------------------------------------------
class IdentifyParams(QualityParams):
    """Options of POST /identify, with the probe's quality gate."""

    k: int = Field(default=5, ge=1, le=1000, description="candidates to return per face (at most the server's max_k)")
    threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="cosine threshold; give it or fpir, not both"
    )
    fpir: float | None = Field(default=None, gt=0.0, lt=1.0, description="target false-positive identification rate")
    faces: Literal["largest", "all"] = Field(default="largest", description="identify the largest face, or every face")

    @field_validator("k")
    @classmethod
    def _at_most_max_k(cls, k: int, info: ValidationInfo) -> int:
        limit = (info.context or {}).get("max_k")
        if isinstance(limit, int) and k > limit:
            raise ValueError(f"k must be at most {limit} (the server's max_k)")
        return k


class IdentifyJSON(IdentifyParams):
    """POST /identify as JSON: the image base64-encoded."""

    image: str = Field(min_length=1, description="base64-encoded image")

    model_config = _examples({"image": B64_EXAMPLE, "k": 5, "fpir": 0.01}, strict=True)


class CandidateOut(_Out):
    """One gallery identity proposed for a face."""

    identity_id: str = Field(description="the identity's id")
    similarity: float = Field(
        description="the identity's score: its template similarities aggregated by the gallery's rule, in [-1, 1]"
    )
    estimated_fmr: float | None = Field(
        default=None,
        description="per-comparison false-match rate at this similarity, from the calibration; with "
        "estimated_fmr_below_resolution, an upper bound (the calibration's 1 / impostor pairs)",
    )
    estimated_fmr_below_resolution: bool = Field(
        default=False,
        description="true when the rate is finer than the calibration resolves: it is below estimated_fmr",
    )
    template_id: int | None = Field(default=None, description="the identity's best-scoring template")
    metadata: dict[str, Any] | None = Field(
        default=None, description="the identity's stored metadata; null for keys without the enroll scope"
    )

    model_config = _examples(_CANDIDATE_EXAMPLE)

    @classmethod
    def of(cls, c: Candidate, *, metadata: bool = True) -> CandidateOut:
        out = c.to_dict()
        if not metadata:
            out["metadata"] = None
        return cls(**out)


class FaceIdentification(_Out):
    """The answer for one face: the accepted identity, or ``is_unknown``; candidates ranked either way."""

    face: FaceOut | None = Field(default=None, description="the face identified")
    identity_id: str | None = Field(
        default=None, description="the accepted identity (the best candidate at or above threshold); null if unknown"
    )
    is_unknown: bool = Field(description="true when no candidate reaches the threshold (or the gallery is empty)")
    threshold: float = Field(description="cosine-similarity threshold a candidate must reach to be accepted")
    target_fpir: float | None = Field(
        default=None,
        description="false-positive identification rate the threshold was chosen for, at this gallery size "
        "(null: the caller's threshold)",
    )
    threshold_extrapolated: bool = Field(
        default=False,
        description="true when the FPIR threshold lies beyond the calibration's measured range "
        "(extrapolated from the impostor tail, conservatively)",
    )
    comparisons: int = Field(
        default=0,
        description="templates the probe is compared with: the N by which the fpir target is scaled to a "
        "per-comparison FMR, 1 - (1 - fpir)^(1/N)",
    )
    fmr_resolution: float | None = Field(
        default=None, description="the finest FMR the calibration resolves (1 / its impostor pairs)"
    )
    candidates: list[CandidateOut] = Field(
        description="the top-k identities ranked by similarity, whether or not they reach the threshold"
    )
    refused: list[QualityFailureOut] = Field(
        default_factory=list,
        description="faces=all: why this face was not searched (below the probe quality policy); empty when searched",
    )

    model_config = _examples(
        {
            "face": _FACE_EXAMPLE,
            "identity_id": None,
            "is_unknown": True,
            "threshold": 0.3751,
            "target_fpir": 0.01,
            "threshold_extrapolated": False,
            "comparisons": 7,
            "fmr_resolution": 2.35e-6,
            "candidates": [{**_CANDIDATE_EXAMPLE, "similarity": 0.21, "estimated_fmr": 0.018}],
        }
    )

    @classmethod
    def of(cls, r: IdentifyResult, *, full: bool = True, floor: float | None = None) -> FaceIdentification:
        """The answer for one face. ``full=False`` (a key without gallery read): no metadata, and only
        the candidates at or above the threshold, or at or above ``floor`` when it is set."""
        cands = r.candidates
        if not full:
            cut = r.threshold if floor is None else min(r.threshold, floor)
            cands = tuple(c for c in cands if c.similarity >= cut)
        return cls(
            face=FaceOut.of(r.face, r.quality),
            identity_id=r.identity_id,
            is_unknown=r.is_unknown,
            threshold=r.threshold,
            target_fpir=r.target_fpir,
            threshold_extrapolated=r.threshold_extrapolated,
            comparisons=r.comparisons,
            fmr_resolution=r.fmr_resolution,
            candidates=[CandidateOut.of(c, metadata=full) for c in cands],
        )


class IdentifyResponse(_Out):
    results: list[FaceIdentification] = Field(description="one per face, largest first")
    faces_total: int = Field(description="faces found in the image")
    truncated: bool = Field(description="true when more faces were found than max_faces_per_image")
    gallery_size: int = Field(
        description="identities in the gallery at the time of the search (each result's comparisons counts templates)"
    )
    model_id: str = Field(description="embedder card id")
    timings: Timings = Field(description="server-side time spent on the request")

    model_config = _examples(
        {
            "results": [
                {
                    "face": _FACE_EXAMPLE,
                    "identity_id": "obama",
                    "is_unknown": False,
                    "threshold": 0.3751,
                    "target_fpir": 0.01,
                    "threshold_extrapolated": False,
                    "comparisons": 7,
                    "fmr_resolution": 2.35e-6,
                    "candidates": [_CANDIDATE_EXAMPLE],
                }
            ],
            "faces_total": 1,
            "truncated": False,
            "gallery_size": 5,
            "model_id": "w600k_mbf",
            "timings": _TIMINGS_EXAMPLE,
        }
    )


# ---- detect / embed -------------------------------------------------------------------------
class DetectParams(_In):
    """Options of POST /detect."""

    quality: bool = Field(
        default=True,
        description="measure each face's quality (aligns and embeds every face: one embedding per face); "
        "false: boxes, scores and landmarks only",
    )


class DetectJSON(DetectParams):
    """POST /detect as JSON: the image base64-encoded."""

    image: str = Field(min_length=1, description="base64-encoded image")

    model_config = _examples({"image": B64_EXAMPLE}, strict=True)


class DetectResponse(_Out):
    faces: list[FaceOut] = Field(description="the faces found, largest first (at most max_faces_per_image)")
    faces_total: int = Field(description="faces found in the image")
    truncated: bool = Field(description="true when more faces were found than max_faces_per_image")
    image: ImageSize = Field(description="the original image's size")
    timings: Timings = Field(description="server-side time spent on the request")

    model_config = _examples(
        {
            "faces": [_FACE_EXAMPLE],
            "faces_total": 1,
            "truncated": False,
            "image": {"width": 1280, "height": 720},
            "timings": {**_TIMINGS_EXAMPLE, "embed_ms": None},
        }
    )


class EmbedParams(_In):
    """Options of POST /embed."""

    faces: Literal["largest", "all"] = Field(
        default="largest", description="embed the largest face, or every face (largest first)"
    )


class EmbedJSON(EmbedParams):
    """POST /embed as JSON: the image base64-encoded."""

    image: str = Field(min_length=1, description="base64-encoded image")

    model_config = _examples({"image": B64_EXAMPLE, "faces": "largest"}, strict=True)


_EMBEDDING_EXAMPLE: dict[str, Any] = {"face": _FACE_EXAMPLE, "vector": [0.0213, -0.0471, 0.0032]}  # `dim` numbers


class EmbeddingOut(_Out):
    face: FaceOut | None = Field(default=None, description="the face embedded")
    vector: list[float] = Field(description="unit-norm embedding: biometric data")

    model_config = _examples(_EMBEDDING_EXAMPLE)


class EmbedResponse(_Out):
    model_id: str = Field(description="embedder card id: embeddings of different models are not comparable")
    dim: int = Field(description="embedding dimension")
    embeddings: list[EmbeddingOut] = Field(description="one per face, largest first")
    faces_total: int = Field(description="faces found in the image")
    truncated: bool = Field(description="true when more faces were found than max_faces_per_image")
    timings: Timings = Field(description="server-side time spent on the request")

    model_config = _examples(
        {
            "model_id": "w600k_mbf",
            "dim": 512,
            "embeddings": [_EMBEDDING_EXAMPLE],
            "faces_total": 1,
            "truncated": False,
            "timings": _TIMINGS_EXAMPLE,
        }
    )


__all__ = [
    "CandidateOut",
    "DetectJSON",
    "DetectParams",
    "DetectResponse",
    "EmbedJSON",
    "EmbedParams",
    "EmbedResponse",
    "EmbeddingOut",
    "FaceIdentification",
    "IdentifyJSON",
    "IdentifyParams",
    "IdentifyResponse",
    "ThresholdParams",
    "VerifyJSON",
    "VerifyParams",
    "VerifyResponse",
]
