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


class ReadyResponse(_Out):
    ready: bool
    status: Literal["loading", "ready", "failed"]
    model_id: str | None = None
    gallery: GallerySummary | None = None
    detail: str | None = None

    model_config = _examples(
        {
            "ready": True,
            "status": "ready",
            "model_id": "w600k_mbf",
            "gallery": {"identities": 120, "templates": 355, "read_only": False},
            "detail": None,
        },
        {"ready": False, "status": "loading", "model_id": None, "gallery": None, "detail": None},
    )


__all__ = [
    "GallerySummary",
    "HealthResponse",
    "ReadyResponse",
]
