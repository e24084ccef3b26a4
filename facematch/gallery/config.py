"""Index configuration: which FAISS structure holds the templates, and how it is searched."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..errors import InvalidArgumentError

IndexKind = Literal["flat", "ivf", "hnsw"]
Storage = Literal["fp32", "fp16", "sq8"]
Device = Literal["auto", "cpu", "gpu"]
Engine = Literal["faiss", "torch"]
Aggregation = Literal["max", "mean", "topk_mean"]

INDEX_KINDS = ("flat", "ivf", "hnsw")
STORAGES = ("fp32", "fp16", "sq8")
DEVICES = ("auto", "cpu", "gpu")
ENGINES = ("faiss", "torch")
AGGREGATIONS = ("max", "mean", "topk_mean")


@dataclass(frozen=True)
class IndexConfig:
    """How templates are indexed.

    ``kind``: ``flat`` (exact, default), ``ivf`` (inverted lists, searched with ``nprobe``)
    or ``hnsw`` (graph). ``storage``: ``fp32``, ``fp16`` or ``sq8`` (8-bit scalar
    quantisation, 4x smaller than fp32). ``rerank`` re-scores the shortlist exactly
    against the fp32 embeddings kept in SQLite. Kinds that need training (IVF, SQ8)
    use an exact flat index until the gallery holds ``min_train`` templates, then the
    index is rebuilt and trained on the stored embeddings.

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
    rerank_factor: int = 4  # the shortlist holds rerank_factor x the templates asked for
    min_train: int = 2048
    device: Device = "auto"
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
        if self.engine == "torch" and self.kind != "flat":
            raise InvalidArgumentError(f"engine='torch' is a flat (exact) index; kind={self.kind!r} needs FAISS")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "rerank_factor", "min_train"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.rerank, bool):
            raise InvalidArgumentError(f"rerank must be True or False, got {self.rerank!r}")
        if self.nlist is not None and (
            not isinstance(self.nlist, int) or isinstance(self.nlist, bool) or self.nlist < 1
        ):
            raise InvalidArgumentError(f"nlist must be a positive integer or None, got {self.nlist!r}")

    @property
    def needs_training(self) -> bool:
        return self.engine == "faiss" and (self.kind == "ivf" or self.storage == "sq8")

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
        codec = {"fp32": "Flat", "fp16": "SQfp16", "sq8": "SQ8"}[self.storage]
        if self.kind == "flat":
            return codec
        if self.kind == "ivf":
            return f"IVF{self.nlist_for(n)},{codec}"
        return f"HNSW{self.hnsw_m}" if self.storage == "fp32" else f"HNSW{self.hnsw_m},{codec}"

    def describe(self) -> str:
        parts: list[str] = [self.kind, self.storage]
        if self.kind == "ivf":
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
        return {
            "kind": self.kind,
            "storage": self.storage,
            "nlist": self.nlist,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "min_train": self.min_train,
        }


__all__ = ["AGGREGATIONS", "ENGINES", "Aggregation", "Device", "Engine", "IndexConfig", "IndexKind", "Storage"]
