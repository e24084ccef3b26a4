"""Index configuration: which FAISS structure holds the templates, and how it is searched."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from ..errors import InvalidArgumentError

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
Storage = Literal["fp32", "fp16", "sq8", "pq"]
Device = Literal["auto", "cpu", "gpu"]
Engine = Literal["faiss", "torch"]
Aggregation = Literal["max", "mean", "topk_mean"]

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
STORAGES = ("fp32", "fp16", "sq8", "pq")
DEVICES = ("auto", "cpu", "gpu")
ENGINES = ("faiss", "torch")
AGGREGATIONS = ("max", "mean", "topk_mean")

# The size rule of kind="auto", from benchmarks/bench_gallery_scale.py on galleries fitted to
# celeb24 (benchmarks/gallery_results.md): exact flat fp32 while a one-probe scan is cheap,
# then IVF with 8-bit codes and an exact fp32 re-rank of the shortlist.
AUTO_FLAT_MAX = 50_000  # templates; flat fp32 below, IVF-SQ8 + re-rank from here
AUTO_NPROBE = 32
AUTO_RERANK_FACTOR = 4


@dataclass(frozen=True)
class IndexConfig:
    """How templates are indexed.

    ``kind``: ``flat`` (exact), ``ivf`` (inverted lists, searched with ``nprobe``),
    ``hnsw`` (graph), or ``auto``: chosen by size (:meth:`resolve`; what a new gallery
    gets when no index is given). ``storage``: ``fp32``, ``fp16``, ``sq8`` (8-bit scalar
    quantisation, 4x smaller than fp32) or ``pq`` (product quantisation, ``pq_m`` bytes
    per template). ``rerank`` scores every template of the shortlisted identities
    exactly against the fp32 embeddings kept in the store (any approximate index: an
    identity found by one of its templates gets its exact score). Kinds that need training (IVF, SQ8, PQ) use an exact
    flat index until the gallery holds ``min_train`` templates, then the index is
    rebuilt and trained on the stored embeddings (in the background: the old index
    serves meanwhile). ``search_threads``: FAISS threads per search call; ``None``
    chooses per call (one thread below ``PARALLEL_MIN_BATCH`` probes, every core from
    there), ``0`` leaves FAISS's own setting alone.

    ``engine``: ``faiss`` (default; a FAISS-GPU mirror when ``device`` allows and the GPU
    probe passes) or ``torch`` (:class:`~facematch.gallery.torch_index.TorchIndex`: a flat
    matrix on a CUDA GPU through PyTorch, for machines without FAISS-GPU; ``device`` ``auto``
    uses CUDA when torch sees it). See docs/gpu.md.
    """

    kind: IndexKind = "flat"
    storage: Storage = "fp32"
    nlist: int | None = None  # IVF lists; None = min(4*sqrt(N), N/39) at training time
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    rerank: bool = False
    rerank_factor: int = 4  # with rerank, the index is asked for rerank_factor x the templates
    min_train: int = 2048
    device: Device = "auto"
    pq_m: int = 64  # PQ sub-quantisers (bytes per template); the dimension must be a multiple
    search_threads: int | None = None
    engine: Engine = "faiss"

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise InvalidArgumentError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        if self.storage not in STORAGES:
            raise InvalidArgumentError(f"index storage must be one of {STORAGES}, got {self.storage!r}")
        if self.device not in DEVICES:
            raise InvalidArgumentError(f"index device must be one of {DEVICES}, got {self.device!r}")
        if self.engine not in ENGINES:
            raise InvalidArgumentError(f"index engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "torch" and self.kind not in ("flat", "auto"):
            raise InvalidArgumentError(f"engine='torch' is a flat (exact) index; kind={self.kind!r} needs FAISS")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "rerank_factor", "min_train", "pq_m"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.rerank, bool):
            raise InvalidArgumentError(f"rerank must be True or False, got {self.rerank!r}")
        if self.nlist is not None and (
            not isinstance(self.nlist, int) or isinstance(self.nlist, bool) or self.nlist < 1
        ):
            raise InvalidArgumentError(f"nlist must be a positive integer or None, got {self.nlist!r}")
        threads = self.search_threads
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
            raise InvalidArgumentError(f"search_threads must be None or an integer >= 0, got {threads!r}")

    @classmethod
    def auto(cls, **kwargs: Any) -> IndexConfig:
        """The size-dependent default (``kind="auto"``); ``device`` and ``search_threads`` may be given."""
        return cls(kind="auto", **kwargs)

    def resolve(self) -> IndexConfig:
        """The concrete structure behind this configuration (``self`` unless ``kind="auto"``).

        ``auto`` is exact flat fp32 below ``AUTO_FLAT_MAX`` templates and IVF-SQ8 with an
        exact re-rank from there (``nlist = min(4 sqrt(N), N/39)`` at each training,
        retrained about every 4x growth, ``nprobe = AUTO_NPROBE``): an IVF-SQ8
        configuration whose ``min_train`` is ``AUTO_FLAT_MAX``.
        """
        if self.kind != "auto":
            return self
        if self.engine == "torch":  # the torch engine is exact flat at any size
            return replace(self, kind="flat", storage="fp32")
        return replace(
            self,
            kind="ivf",
            storage="sq8",
            nlist=None,
            nprobe=AUTO_NPROBE,
            rerank=True,
            rerank_factor=AUTO_RERANK_FACTOR,
            min_train=AUTO_FLAT_MAX,
        )

    def choice_reason(self) -> str:
        """Why this configuration is the one in use (for the gallery's record and ``info()``)."""
        if self.kind != "auto":
            return f"explicit: {self.describe()}"
        return (
            f"auto: exact flat fp32 below {AUTO_FLAT_MAX:,} templates (a one-probe scan costs a few ms there); "
            f"from {AUTO_FLAT_MAX:,}, IVF-SQ8 with nlist = min(4 sqrt(N), N/39) retrained at each 4x growth, "
            f"nprobe {AUTO_NPROBE} and an exact fp32 re-rank of {AUTO_RERANK_FACTOR}x the shortlist "
            "(identity recall@1 >= 0.99 of exact search at 1M templates on galleries fitted to celeb24, "
            "benchmarks/gallery_results.md)"
        )

    @property
    def needs_training(self) -> bool:
        return self.engine == "faiss" and (self.kind == "ivf" or self.storage in ("sq8", "pq"))

    @property
    def exact(self) -> bool:
        """True when search scores equal exact cosine similarity (flat fp32, or any kind re-ranked)."""
        return (self.kind == "flat" and self.storage == "fp32") or self.rerank

    def nlist_for(self, n: int) -> int:
        if self.nlist is not None:
            return self.nlist
        # 4*sqrt(N) lists, but no more than N/39 (FAISS' k-means wants >= 39 points per centroid)
        return int(max(1, min(65536, round(4 * math.sqrt(max(n, 1))), n // 39)))

    def factory_string(self, n: int) -> str:
        """FAISS ``index_factory`` description of the inner index for ``n`` training vectors."""
        # "np": no polysemous training (a slow code reordering only Hamming-filtered search uses)
        codec = {"fp32": "Flat", "fp16": "SQfp16", "sq8": "SQ8", "pq": f"PQ{self.pq_m}np"}[self.storage]
        if self.kind == "flat":
            return codec
        if self.kind == "ivf":
            return f"IVF{self.nlist_for(n)},{codec}"
        return f"HNSW{self.hnsw_m}" if self.storage == "fp32" else f"HNSW{self.hnsw_m},{codec}"

    def describe(self) -> str:
        if self.kind == "auto":
            return "auto"
        parts: list[str] = [self.kind, self.storage if self.storage != "pq" else f"pq{self.pq_m}"]
        if self.kind == "ivf":
            if self.nlist is not None:
                parts.append(f"nlist={self.nlist}")
            parts.append(f"nprobe={self.nprobe}")
        if self.kind == "hnsw":
            parts.append(f"M={self.hnsw_m},efSearch={self.ef_search}")
        if self.rerank:
            parts.append("rerank")
        if self.engine != "faiss":
            parts.insert(0, self.engine)
        return "/".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = False) -> IndexConfig:
        """Build from a dict; ``strict`` rejects unknown keys (stored configs ignore them)."""
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"an index configuration must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if strict and unknown:
            raise InvalidArgumentError(f"unknown index option(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def structure_key(self) -> dict[str, Any]:
        """The fields that change what is stored in the index file (search-time knobs excluded)."""
        key: dict[str, Any] = {
            "kind": self.kind,
            "storage": self.storage,
            "nlist": self.nlist,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "min_train": self.min_train,
        }
        if self.storage == "pq":  # only where it matters, so indexes saved before PQ existed still load
            key["pq_m"] = self.pq_m
        return key


__all__ = [
    "AGGREGATIONS",
    "AUTO_FLAT_MAX",
    "AUTO_NPROBE",
    "AUTO_RERANK_FACTOR",
    "ENGINES",
    "Aggregation",
    "Device",
    "Engine",
    "IndexConfig",
    "IndexKind",
    "Storage",
]
