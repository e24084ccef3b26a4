"""Response models of the operations routes (health, readiness)."""

from __future__ import annotations

from typing import Literal

from .common import _examples, _Out


class HealthResponse(_Out):
    status: Literal["ok", "failed"]

    model_config = _examples({"status": "ok"})


class GallerySummary(_Out):
    identities: int
    templates: int
    read_only: bool

    model_config = _examples({"identities": 120, "templates": 355, "read_only": False})


class ModelProviders(_Out):
    """What each model really runs on (checked after loading; ONNX Runtime names, or ``torch-cuda``)."""

    detector: list[str]
    embedder: list[str]


class ReadyResponse(_Out):
    ready: bool
    status: Literal["loading", "ready", "failed"]
    model_id: str | None = None
    gallery: GallerySummary | None = None
    providers: ModelProviders | None = None
    index: str | None = None  # the gallery's search engine, e.g. faiss:flat/fp32@gpu
    detail: str | None = None

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
