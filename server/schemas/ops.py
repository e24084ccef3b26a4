"""Response models of the operations routes (health, readiness)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import _examples, _Out


class HealthResponse(_Out):
    """Liveness of the process."""

    status: Literal["ok", "failed"] = Field(
        description="ok while serving; failed once loading models or gallery failed"
    )

    model_config = _examples({"status": "ok"})


class GallerySummary(_Out):
    """Size and mode of the served gallery."""

    identities: int = Field(description="identities enrolled")
    templates: int = Field(description="templates stored")
    read_only: bool = Field(description="true when the server opened the gallery read-only (writes answer 409)")

    model_config = _examples({"identities": 120, "templates": 355, "read_only": False})


class ModelProviders(_Out):
    """What each model really runs on (checked after loading; ONNX Runtime names, or ``torch-cuda``)."""

    detector: list[str] = Field(description="the detector session's providers, in priority order")
    embedder: list[str] = Field(description="the embedder's: ONNX Runtime providers, or torch-cuda / torch-cpu")


class ReadyResponse(_Out):
    """Readiness: whether the models (and gallery) are loaded, and what they run on."""

    ready: bool = Field(description="true once models (and the gallery, if configured) are loaded")
    status: Literal["loading", "ready", "failed"] = Field(description="loading, ready, or failed")
    model_id: str | None = Field(default=None, description="embedder card id, once loaded")
    gallery: GallerySummary | None = Field(default=None, description="the gallery, when one is configured and loaded")
    providers: ModelProviders | None = Field(
        default=None, description="what each model's session really runs on (checked after loading), once loaded"
    )
    index: str | None = Field(
        default=None, description="the gallery's search engine and device, e.g. faiss:flat/fp32@gpu"
    )
    detail: str | None = Field(default=None, description="why loading failed")

    model_config = _examples(
        {
            "ready": True,
            "status": "ready",
            "model_id": "w600k_mbf",
            "gallery": {"identities": 120, "templates": 355, "read_only": False},
            "providers": {
                "detector": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                "embedder": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            },
            "index": "faiss:flat/fp32@gpu",
            "detail": None,
        },
        {
            "ready": False,
            "status": "loading",
            "model_id": None,
            "gallery": None,
            "providers": None,
            "index": None,
            "detail": None,
        },
    )


__all__ = [
    "GallerySummary",
    "HealthResponse",
    "ModelProviders",
    "ReadyResponse",
]
