"""FastAPI dependencies: state, matcher, gallery, scopes. Tests override them.

app.dependency_overrides[get_gallery] = lambda: my_gallery

The inference slot is not a dependency: dependencies run before the body is read, so a slow
upload would hold a slot. A route reads and checks its body first, then takes the slot with
``with state.admission.slot(): ...`` (docs/server.md, "How a request runs").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from facematch.gallery import Gallery
from facematch.matcher import FaceMatcher

from .errors import GalleryNotConfiguredError, NotReadyError
from .security import Principal, presented_key
from .settings import Scope, Settings
from .state import ServerState

_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.facematch
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def _not_ready(state: ServerState) -> NotReadyError:
    if state.status == "failed":
        return NotReadyError("the server failed to load its models or gallery; see /readyz")
    return NotReadyError("the server is still loading its models; retry shortly")


def get_matcher(state: StateDep) -> FaceMatcher:
    """The loaded FaceMatcher (503 ``not_ready`` until loaded)."""
    if state.matcher is None:
        raise _not_ready(state)
    return state.matcher


def get_gallery(state: StateDep) -> Gallery:
    """The open gallery (503 until loaded; 404 ``gallery_not_configured`` when the server has none)."""
    if not state.ready:
        raise _not_ready(state)
    if state.gallery is None:
        raise GalleryNotConfiguredError("this server has no gallery; start it with --gallery PATH")
    return state.gallery


SettingsDep = Annotated[Settings, Depends(get_settings)]
MatcherDep = Annotated[FaceMatcher, Depends(get_matcher)]
GalleryDep = Annotated[Gallery, Depends(get_gallery)]


def require_scope(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting keys that hold ``scope`` (or admin): 401 without a valid key, 403 without the scope."""

    async def dependency(
        state: StateDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        x_api_key: Annotated[str | None, Depends(_api_key)],
    ) -> Principal:
        authorization = f"Bearer {bearer.credentials}" if bearer is not None else None
        principal = state.keys.authenticate(presented_key(authorization, x_api_key))
        return state.keys.authorize(principal, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


def scoped(scope: Scope) -> Any:
    return Depends(require_scope(scope))


# the caller of a `match` route, for routes whose answer depends on its other scopes
MatchKey = Annotated[Principal, Depends(require_scope("match"))]


__all__ = [
    "GalleryDep",
    "MatchKey",
    "MatcherDep",
    "SettingsDep",
    "StateDep",
    "get_gallery",
    "get_matcher",
    "get_settings",
    "get_state",
    "require_scope",
    "scoped",
]
