"""Gallery: SQLite source of truth, FAISS (or Milvus) index, open-set identification.

``Gallery`` (gallery.py) is the facade; the source of truth sits behind the ``Store``
interface (store.py; SQLite in sqlite_store.py), the derived index is kept in step by
sync.py, searches and results are search.py, enrolment steps and reports enrol.py.

Nothing heavy is imported here: FAISS loads when an index is first built, pymilvus
only for the Milvus backend, and the face models only on the first image input.
"""

from __future__ import annotations

from .config import IndexConfig
from .gallery import Gallery
from .openset import per_comparison_fmr, threshold_for_fpir
from .types import EnrollReport, GalleryInfo, IdentityInfo, ImageOutcome, Page

__all__ = [
    "EnrollReport",
    "Gallery",
    "GalleryInfo",
    "IdentityInfo",
    "ImageOutcome",
    "IndexConfig",
    "Page",
    "per_comparison_fmr",
    "threshold_for_fpir",
]
