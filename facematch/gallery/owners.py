"""In-memory map from template id to identity row id (16 bytes per template).

Template ids grow monotonically (SQLite ``AUTOINCREMENT``), so appends keep the
arrays sorted and a lookup is a binary search.
"""

from __future__ import annotations

import numpy as np


class TemplateOwners:
    """Sorted template ids and the identity row id each belongs to."""

    def __init__(self, template_ids: np.ndarray, owners: np.ndarray) -> None:
        order = np.argsort(template_ids, kind="stable")
        self._tids = np.asarray(template_ids, np.int64)[order]
        self._owners = np.asarray(owners, np.int64)[order]
        self._n = int(self._tids.size)

    def __len__(self) -> int:
        return self._n

    @property
    def template_ids(self) -> np.ndarray:
        return self._tids[: self._n]

    def lookup(self, template_ids: np.ndarray) -> np.ndarray:
        """Owner row id of each template id, ``-1`` for unknown ids."""
        t = np.asarray(template_ids, np.int64)
        tids = self._tids[: self._n]
        pos = np.searchsorted(tids, t)
        pos_c = np.clip(pos, 0, max(self._n - 1, 0))
        hit = (pos < self._n) & (tids[pos_c] == t) if self._n else np.zeros(t.shape, bool)
        return np.where(hit, self._owners[: self._n][pos_c] if self._n else -1, -1).astype(np.int64)

    def append(self, template_ids: np.ndarray, owner: int) -> None:
        t = np.asarray(template_ids, np.int64).reshape(-1)
        if t.size == 0:
            return
        need = self._n + t.size
        if need > self._tids.size:  # grow geometrically
            cap = max(need, 2 * self._tids.size, 1024)
            self._tids = np.resize(self._tids, cap)
            self._owners = np.resize(self._owners, cap)
        self._tids[self._n : need] = t
        self._owners[self._n : need] = owner
        in_order = self._n == 0 or t.min() > self._tids[self._n - 1]
        self._n = need
        if not in_order or np.any(np.diff(t) <= 0):
            order = np.argsort(self._tids[: self._n], kind="stable")
            self._tids[: self._n] = self._tids[: self._n][order]
            self._owners[: self._n] = self._owners[: self._n][order]

    def remove(self, template_ids: np.ndarray) -> None:
        keep = ~np.isin(self._tids[: self._n], np.asarray(template_ids, np.int64))
        self._tids = self._tids[: self._n][keep].copy()
        self._owners = self._owners[: self._n][keep].copy()
        self._n = int(self._tids.size)

    def templates_of(self, owner: int) -> np.ndarray:
        return self._tids[: self._n][self._owners[: self._n] == owner]


__all__ = ["TemplateOwners"]
