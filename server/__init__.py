"""facematch.server: the REST server (FastAPI + uvicorn).

    facematch serve --gallery people.fmg                     # or:
    uvicorn --factory facematch.server.app:create_app

Nothing heavy is imported here; see :mod:`facematch.server.app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .settings import Settings


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(f"module 'facematch.server' has no attribute {name!r}")


__all__ = ["Settings", "create_app"]
