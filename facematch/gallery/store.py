"""The gallery's source of truth: the :class:`Store` interface and the rules on what it stores.

A store holds the gallery's settings (model binding, backend, index configuration),
its identities (with JSON metadata) and every template's fp32 embedding. The gallery
talks to it only through :class:`Store`: plain Python values and numpy arrays in and
out, never a connection or a cursor, so another database (PostgreSQL) is one more
class beside :class:`~facematch.gallery.sqlite_store.SQLiteStore`, the embedded one
(:class:`~facematch.gallery.postgres_store.PostgresStore` is the shared one; stores
written by several processes at once also keep a change log, see ``changes.py``).
The rules every implementation keeps:

- each write method is one transaction, committed before it returns; a failure rolls
  all of it back;
- identity ids are unique by the store's own constraint (a concurrent duplicate is a
  :class:`DuplicateIdentityError`, not a second row); callers pass ids already checked
  by :func:`validate_identity_id`, metadata is stored as :func:`dump_metadata` checks it;
- template ids increase and are never reused, so a stale derived index can never
  point a deleted template's id at a new face;
- each identity also has an integer *key* assigned by the store (stable while the
  identity exists): the in-memory template → identity map and searches use it.
"""

from __future__ import annotations

import base64
import json
import logging
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DuplicateIdentityError, IdentityNotFoundError, InvalidArgumentError
from .types import IdentityInfo

logger = logging.getLogger(__name__)

MAX_METADATA_BYTES = 64 * 1024
MAX_IDENTITY_LEN = 256
# Unicode categories refused in identity ids: control (C0, C1, U+0085), format (zero-width
# characters, BOM, bidi controls), line and paragraph separators.
_REFUSED_CATEGORIES = {
    "Cc": "control",
    "Cf": "format",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}


def validate_identity_id(identity_id: object) -> str:
    """The identity id in its one stored form (Unicode NFC), or ``InvalidArgumentError``.

    The rule of the SDK, the CLI and the server: a string of 1 to 256 characters after NFC
    normalisation (so a decomposed and a precomposed "é" are the same id), not only
    whitespace, not ``.`` or ``..``, without ``/``, and without characters of the Unicode
    categories Cc (control, including U+0085), Cf (format: zero-width characters, BOM, the
    bidi controls), Zl and Zp (line and paragraph separators).
    """
    if not isinstance(identity_id, str):
        raise InvalidArgumentError(f"identity id must be a string, got {type(identity_id).__name__}")
    if len(identity_id) > 4 * MAX_IDENTITY_LEN:  # before normalising: NFC never shrinks a string this much
        raise InvalidArgumentError(f"identity id is longer than {MAX_IDENTITY_LEN} characters")
    nid = unicodedata.normalize("NFC", identity_id)
    if not nid.strip():
        raise InvalidArgumentError("identity id must be a non-empty string (not only whitespace)")
    if len(nid) > MAX_IDENTITY_LEN:
        raise InvalidArgumentError(f"identity id is longer than {MAX_IDENTITY_LEN} characters")
    if nid in (".", ".."):
        raise InvalidArgumentError(f"identity id must not be {nid!r}")
    if "/" in nid:
        raise InvalidArgumentError("identity id must not contain '/'")
    for c in nid:
        kind = _REFUSED_CATEGORIES.get(unicodedata.category(c))
        if kind is not None:
            raise InvalidArgumentError(f"identity id must not contain {kind} characters (U+{ord(c):04X})")
    return nid


def dump_metadata(metadata: object) -> str:
    """Identity metadata as the JSON text stored (``{}`` for ``None``), or ``InvalidArgumentError``."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidArgumentError("metadata must be a dict with string keys")
    try:
        text = json.dumps(metadata, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable: {exc}") from exc
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise InvalidArgumentError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    return text


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    if not isinstance(cursor, str):
        raise InvalidArgumentError(f"a pagination cursor is the string a previous page returned, got {cursor!r}")
    try:
        pad = "=" * (-len(cursor) % 4)
        return base64.b64decode((cursor + pad).encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
    except (ValueError, UnicodeError) as exc:
        raise InvalidArgumentError("invalid pagination cursor") from exc


def duplicate_identity(identity_id: str) -> DuplicateIdentityError:
    """The one duplicate-identity error (the SDK, CLI and server each name the 'add' action differently)."""
    return DuplicateIdentityError(
        f"identity {identity_id!r} already exists; add templates to it instead", identity_id=identity_id
    )


def identity_not_found(identity_id: str) -> IdentityNotFoundError:
    return IdentityNotFoundError(f"no identity {identity_id!r}", identity_id=identity_id)


@dataclass(frozen=True)
class TemplatesWritten:
    """What a committed template write gave: the identity's key and the new template ids, in input order.

    ``seq`` is the write's sequence number in the store's change log (stores that keep one).
    """

    identity_key: int
    template_ids: tuple[int, ...]
    seq: int | None = None


class Store(ABC):
    """The operations the gallery needs from its source of truth (see the module docstring for the rules).

    Embeddings go in as ``(n, dim)`` float32 arrays of unit vectors and come back as
    float32; ``dim`` is the gallery's bound dimension.
    """

    read_only: bool

    @abstractmethod
    def close(self) -> None: ...

    # ---- settings (model binding, backend, index configuration, gallery id) -------------
    @abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    def set_meta(self, values: Mapping[str, str]) -> None:
        """Set several settings in one transaction."""

    @abstractmethod
    def init_meta(self, values: Mapping[str, str]) -> dict[str, str]:
        """Set the settings that are absent, keep those present, in one transaction; returns the stored values.

        The first writer wins: two processes binding a shared gallery at once agree on one model.
        """

    # ---- identities ------------------------------------------------------------------------
    @abstractmethod
    def identity_key(self, identity_id: str) -> int | None:
        """The identity's key, ``None`` when it does not exist."""

    @abstractmethod
    def get_identity(self, identity_id: str) -> IdentityInfo | None: ...

    @abstractmethod
    def list_identities(self, after: str | None, limit: int) -> list[IdentityInfo]:
        """Up to ``limit`` identities with ids greater than ``after``, ordered by id."""

    @abstractmethod
    def identities_by_key(self, keys: Sequence[int]) -> dict[int, tuple[str, dict[str, Any]]]:
        """key -> (identity id, metadata) for the given keys that exist."""

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """(identities, templates)."""

    # ---- templates -------------------------------------------------------------------------
    @abstractmethod
    def template_owners(self) -> tuple[np.ndarray, np.ndarray]:
        """All template ids (int64, ascending) and the key of the identity each belongs to."""

    @abstractmethod
    def embeddings(self, template_ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, fp32 embeddings) of the given template ids that exist, in ascending id order."""

    @abstractmethod
    def embeddings_of_identities(self, keys: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(template ids, identity keys, embeddings) of every template of the given identities."""

    @abstractmethod
    def template_sources(self, template_ids: Sequence[int]) -> dict[int, str | None]:
        """template id -> the source it was enrolled from (a file name or path, ``#i``, or ``None``)."""

    @abstractmethod
    def iter_embeddings(self, dim: int, batch: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (template ids, embeddings) in id order, ``batch`` at a time (for index rebuilds)."""

    # ---- writes: one transaction each --------------------------------------------------------
    @abstractmethod
    def create_identity(
        self,
        identity_id: str,
        embeddings: np.ndarray,
        sources: Sequence[str | None],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> TemplatesWritten:
        """Create the identity with one template per row; ``DuplicateIdentityError`` if it exists."""

    @abstractmethod
    def add_templates(
        self, identity_id: str, embeddings: np.ndarray, sources: Sequence[str | None]
    ) -> TemplatesWritten:
        """Add one template per row to an existing identity; ``IdentityNotFoundError`` otherwise."""

    @abstractmethod
    def delete_identity(self, identity_id: str) -> IdentityInfo:
        """Delete the identity and its templates; returns what was deleted (``IdentityNotFoundError``)."""

    @abstractmethod
    def delete_template(self, template_id: int) -> str:
        """Delete one template; returns its identity's id, which is kept (``TemplateNotFoundError``)."""

    @abstractmethod
    def set_metadata(self, identity_id: str, metadata: dict[str, Any]) -> IdentityInfo:
        """Replace the identity's metadata; returns the updated identity (``IdentityNotFoundError``)."""


__all__ = [
    "MAX_IDENTITY_LEN",
    "MAX_METADATA_BYTES",
    "Store",
    "TemplatesWritten",
    "decode_cursor",
    "dump_metadata",
    "duplicate_identity",
    "encode_cursor",
    "identity_not_found",
    "validate_identity_id",
]
