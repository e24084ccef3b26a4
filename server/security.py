"""API-key authentication: hashed keys, constant-time comparison, scopes.

A key arrives as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The server
hashes it with sha256 and compares the digest with every configured hash using
``hmac.compare_digest`` (no early exit on the first match, so timing does not reveal
which key or how many keys exist). Keys are never logged; only the key's *name* is.
``admin`` implies every other scope.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ForbiddenError, UnauthorizedError
from .settings import SCOPES, ApiKey, Scope

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 512


@dataclass(frozen=True)
class Principal:
    """Who made a request: the key's name (``anonymous`` when auth is disabled) and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


class KeyRing:
    """The configured keys, as sha256 digests."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._entries = [(bytes.fromhex(str(k.key_sha256)), k.name, frozenset(k.scopes)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, presented: str | None) -> Principal:
        """The principal of a presented key; ``UnauthorizedError`` when missing or unknown."""
        if not self.enabled:
            return ANONYMOUS
        if not presented:
            raise UnauthorizedError("an API key is required (Authorization: Bearer <key> or X-API-Key)")
        if len(presented) > MAX_KEY_LENGTH:
            raise UnauthorizedError("invalid API key")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        for stored, name, scopes in self._entries:
            if hmac.compare_digest(digest, stored) and found is None:
                found = Principal(name, scopes)
        if found is None:
            logger.info("rejected a request with an unknown API key")
            raise UnauthorizedError("invalid API key")
        return found

    @staticmethod
    def authorize(principal: Principal, scope: Scope) -> Principal:
        """``principal`` if it holds ``scope`` (or admin); ``ForbiddenError`` otherwise."""
        if not principal.allows(scope):
            logger.info("key %r lacks scope %r", principal.name, scope)
            raise ForbiddenError(f"this API key lacks the '{scope}' scope", scope=scope)
        return principal


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key`` (Authorization wins when both are sent)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key:
        return x_api_key.strip()
    return None


__all__ = ["ANONYMOUS", "KeyRing", "Principal", "presented_key"]
