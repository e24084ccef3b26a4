"""Request and response models (separate classes: what comes in is never what goes out).

Optional response members default to ``None`` so the OpenAPI examples (from which FastAPI
drops nulls) still validate; responses always carry them, as ``null`` when empty.

One module per area (common, match, explain, gallery, ops); import them from here.

Images travel as multipart file parts, or in JSON as base64 strings. Responses carry
boxes, landmarks, scores and similarities; embeddings appear only in ``EmbedResponse``.
"""

from __future__ import annotations

from .batch import PairErrorOut, PairOut, VerifyBatchForm, VerifyBatchJSON, VerifyBatchResponse
from .common import (
    B64_EXAMPLE,
    FaceOut,
    ImageSize,
    Problem,
    QualityFailureOut,
    QualityOut,
    QualityParams,
    Timings,
    ValidationIssue,
)
from .explain import ExplainedFaceOut, ExplainJSON, ExplainParams, ExplainResponse, RegionShareOut
from .gallery import (
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
    IdentityVerifyJSON,
    IdentityVerifyParams,
    IdentityVerifyResponse,
    ImageOutcomeOut,
    NoParams,
    TemplateScoreOut,
)
from .match import (
    CandidateOut,
    DetectJSON,
    DetectParams,
    DetectResponse,
    EmbeddingOut,
    EmbedJSON,
    EmbedParams,
    EmbedResponse,
    FaceIdentification,
    IdentifyJSON,
    IdentifyParams,
    IdentifyResponse,
    ThresholdParams,
    VerifyJSON,
    VerifyParams,
    VerifyResponse,
)
from .ops import GallerySummary, HealthResponse, ReadyResponse

__all__ = [
    "B64_EXAMPLE",
    "IDENTITY_ID_DESC",
    "AddTemplatesForm",
    "AddTemplatesJSON",
    "CandidateOut",
    "DeletedTemplate",
    "DetectJSON",
    "DetectParams",
    "DetectResponse",
    "EmbedJSON",
    "EmbedParams",
    "EmbedResponse",
    "EmbeddingOut",
    "EnrollForm",
    "EnrollJSON",
    "EnrollResponse",
    "ExplainJSON",
    "ExplainParams",
    "ExplainResponse",
    "ExplainedFaceOut",
    "FaceIdentification",
    "FaceOut",
    "GallerySummary",
    "HealthResponse",
    "IdentifyJSON",
    "IdentifyParams",
    "IdentifyResponse",
    "IdentityOut",
    "IdentityPage",
    "IdentityUpdate",
    "IdentityVerifyJSON",
    "IdentityVerifyParams",
    "IdentityVerifyResponse",
    "ImageOutcomeOut",
    "ImageSize",
    "NoParams",
    "PairErrorOut",
    "PairOut",
    "Problem",
    "QualityFailureOut",
    "QualityOut",
    "QualityParams",
    "ReadyResponse",
    "RegionShareOut",
    "TemplateScoreOut",
    "ThresholdParams",
    "Timings",
    "ValidationIssue",
    "VerifyBatchForm",
    "VerifyBatchJSON",
    "VerifyBatchResponse",
    "VerifyJSON",
    "VerifyParams",
    "VerifyResponse",
]
