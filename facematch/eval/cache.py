"""On-disk embedding cache keyed by image content hash and model, so re-running an evaluation is instant.

The cache is a SQLite file. A key is ``sha256(image bytes)`` plus a *pipeline key*
naming the embedder (card id and model sha256) and, for unaligned images, the
detector and its settings. Failures (no face, undecodable image) are cached too, so
they are reported again without re-running detection.

The file holds face embeddings, which are biometric data: it is created with
owner-only permissions; delete it (or pass ``--no-cache``) when that matters.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import CACHE_ENV, user_cache_dir

logger = logging.getLogger(__name__)

CACHE_FILE = "embeddings.sqlite"


def default_cache_dir() -> Path:
    """``$FACEMATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/facematch``, else ``~/.cache/facematch``."""
    return user_cache_dir()


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CachedEmbedding:
    """One cached outcome: ``status`` is ``ok`` (with vector and norm) or a failure code."""

    status: str
    vector: np.ndarray | None
    norm: float | None
    message: str = ""


class EmbeddingCache:
    """SQLite-backed map ``(content hash, pipeline key) -> embedding or failure``."""

    def __init__(self, directory: Path) -> None:
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILE
        fresh = not self.path.exists()
        self._db = sqlite3.connect(str(self.path))
        if fresh:
            try:
                os.chmod(self.path, 0o600)
            except OSError:  # pragma: no cover - exotic file systems
                logger.debug("cannot restrict permissions of %s", self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings ("
            " image_sha256 TEXT NOT NULL, pipeline TEXT NOT NULL, status TEXT NOT NULL,"
            " message TEXT NOT NULL DEFAULT '', dim INTEGER, vector BLOB, norm REAL,"
            " PRIMARY KEY (image_sha256, pipeline))"
        )
        self._db.commit()

    def get_many(self, hashes: Iterable[str], pipeline: str) -> dict[str, CachedEmbedding]:
        """Cached outcomes of the given image hashes under ``pipeline``."""
        wanted = list(dict.fromkeys(hashes))
        out: dict[str, CachedEmbedding] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT image_sha256, status, message, dim, vector, norm FROM embeddings "
                f"WHERE pipeline = ? AND image_sha256 IN ({marks})",
                [pipeline, *chunk],
            )
            for h, status, message, dim, blob, norm in rows:
                vec = None if blob is None else np.frombuffer(blob, dtype=np.float32).reshape(int(dim)).copy()
                out[h] = CachedEmbedding(status, vec, norm, message)
        return out

    def put_many(self, pipeline: str, items: Iterable[tuple[str, CachedEmbedding]]) -> None:
        rows = []
        for h, item in items:
            vec = None if item.vector is None else np.asarray(item.vector, np.float32).reshape(-1)
            rows.append(
                (
                    h,
                    pipeline,
                    item.status,
                    item.message,
                    None if vec is None else int(vec.size),
                    None if vec is None else vec.tobytes(),
                    None if item.norm is None else float(item.norm),
                )
            )
        self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CACHE_ENV", "CachedEmbedding", "EmbeddingCache", "content_hash", "default_cache_dir"]
