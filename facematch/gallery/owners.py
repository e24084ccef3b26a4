"""In-memory map from template id to identity row id.

Template ids grow monotonically (SQLite ``AUTOINCREMENT``, a PostgreSQL sequence), so
appends keep the sorted arrays sorted. A lookup (every search maps hundreds of template
ids to their identities) reads a dense array indexed by template id, one memory access
per id: a binary search over a million ids misses the CPU cache ~20 times per id (0.8 ms
per probe at 1M templates). The dense array costs 8 bytes per id up to the largest id, so
it is kept only while ids are not too sparse (``DENSE_SLACK``; deletions leave holes);
beyond that, lookups binary-search the sorted ids. Either way the answers are the same.
"""

from __future__ import annotations

import numpy as np

DENSE_SLACK = 4  # keep the dense array while the largest id is at most 4x the template count (+ DENSE_MIN)
DENSE_MIN = 1 << 16


class TemplateOwners:
    """Sorted template ids and the identity row id each belongs to."""

    def __init__(self, template_ids: np.ndarray, owners: np.ndarray) -> None:
        order = np.argsort(template_ids, kind="stable")
        self._tids = np.asarray(template_ids, np.int64)[order]
        self._owners = np.asarray(owners, np.int64)[order]
        self._n = int(self._tids.size)
        self._dense: np.ndarray | None = None  # owner by template id, -1 for none
        self._build_dense()

    def __len__(self) -> int:
        return self._n

    @property
    def template_ids(self) -> np.ndarray:
        return self._tids[: self._n]

    @property
    def dense(self) -> bool:
        """True while lookups read the dense array (ids not too sparse)."""
        return self._dense is not None

    def _dense_fits(self, top: int) -> bool:
        return top < DENSE_SLACK * self._n + DENSE_MIN

    def _build_dense(self) -> None:
        self._dense = None
        top = int(self._tids[self._n - 1]) if self._n else 0
        if self._n and (self._tids[0] < 0 or not self._dense_fits(top)):
            return
        dense = np.full(max(top + 1, 1024), -1, np.int64)
        dense[self._tids[: self._n]] = self._owners[: self._n]
        self._dense = dense

    def lookup(self, template_ids: np.ndarray) -> np.ndarray:
        """Owner row id of each template id, ``-1`` for unknown ids."""
        t = np.asarray(template_ids, np.int64)
        dense = self._dense
        if dense is not None:
            inside = (t >= 0) & (t < dense.size)
            if inside.all():
                return dense[t]
            return np.where(inside, dense[np.where(inside, t, 0)], -1)
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
        dense = self._dense
        top = int(t.max())
        if dense is None or t.min() < 0 or not self._dense_fits(top):
            if dense is not None or (t.min() >= 0 and self._dense_fits(int(self._tids[self._n - 1]))):
                self._build_dense()  # dropped (too sparse now), or back within reach
            return
        if top >= dense.size:  # grow geometrically
            grown = np.full(max(top + 1, 2 * dense.size), -1, np.int64)
            grown[: dense.size] = dense
            self._dense = dense = grown
        dense[t] = owner

    def remove(self, template_ids: np.ndarray) -> None:
        gone = np.asarray(template_ids, np.int64).reshape(-1)
        keep = ~np.isin(self._tids[: self._n], gone)
        self._tids = self._tids[: self._n][keep].copy()
        self._owners = self._owners[: self._n][keep].copy()
        self._n = int(self._tids.size)
        dense = self._dense
        if dense is not None:
            top = int(self._tids[self._n - 1]) if self._n else 0
            if not self._dense_fits(top):
                self._dense = None
            else:
                dense[gone[(gone >= 0) & (gone < dense.size)]] = -1

    def templates_of(self, owner: int) -> np.ndarray:
        return self._tids[: self._n][self._owners[: self._n] == owner]


__all__ = ["DENSE_MIN", "DENSE_SLACK", "TemplateOwners"]
