"""One writer per gallery: an exclusive, non-blocking ``flock`` on ``<gallery>/writer.lock``.

``flock`` locks belong to the open file, so a second writer in another process *or*
the same process is refused, and the kernel drops the lock when the holder dies
(``kill -9`` included): a crashed writer never leaves a stale lock behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import BackendUnavailableError, GalleryLockedError

logger = logging.getLogger(__name__)

LOCK_FILE = "writer.lock"


class WriterLock:
    """Held from construction until :meth:`release`."""

    def __init__(self, directory: Path) -> None:
        try:
            import fcntl
        except ImportError as exc:  # pragma: no cover - Windows
            raise BackendUnavailableError("gallery write locking needs POSIX flock (Linux, macOS)") from exc
        self.path = directory / LOCK_FILE
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            raise GalleryLockedError(
                f"gallery {directory} is open for writing by another process or handle; "
                "close it first, or open this one with read_only=True"
            ) from exc
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


__all__ = ["LOCK_FILE", "WriterLock"]
