"""Index configuration: which FAISS structure holds the templates, and how it is searched."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from ..errors import InvalidArgumentError

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
Storage = Literal["fp32", "fp16", "sq8", "pq", "pq4"]
Device = Literal["auto", "cpu", "gpu"]
Engine = Literal["faiss", "torch"]
Aggregation = Literal["max", "mean", "topk_mean"]

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
STORAGES = ("fp32", "fp16", "sq8", "pq", "pq4")
DEVICES = ("auto", "cpu", "gpu")
ENGINES = ("faiss", "torch")
AGGREGATIONS = ("max", "mean", "topk_mean")

# The size rule of kind="auto", from benchmarks/bench_gallery_scale.py on galleries fitted to
# celeb24 (benchmarks/README.md, "Gallery at scale"): exact flat fp32 while a one-probe scan is
# cheap, then IVF over 4-bit fast-scan PQ codes (FAISS's SIMD PQ scan) with an exact fp32
# re-rank of every template of the shortlisted identities. At 1M templates that kept identity
# recall@1 >= 0.99 of exact search at a few ms per probe, where IVF-SQ8 needed ~15 ms and HNSW
# did not reach 0.99 at all.
AUTO_FLAT_MAX = 50_000  # templates; flat fp32 below, IVF-PQ4 + re-rank from here
AUTO_NLIST_SCALE = 1.0  # nlist = sqrt(N)
AUTO_NPROBE_FRACTION = 0.35  # of the lists: 0.992 recall at 1M in the Gallery (0.25: 0.988)
AUTO_RERANK_FACTOR = 4
AUTO_RERANK_FROM = 1_000_000  # templates; the re-rank width grows as sqrt(N / 1M) above (10M: 13x; 12x measured 0.993)
MAX_RERANK_FACTOR = 64
AUTO_PQ_DIMS_PER_CODE = 4  # pq_m = dim / 4 sub-quantisers of 4 bits: dim / 8 bytes per template


@dataclass(frozen=True)
class IndexConfig:
    """How templates are indexed.

    ``kind``: ``flat`` (exact), ``ivf`` (inverted lists, searched with ``nprobe``),
    ``hnsw`` (graph), or ``auto``: chosen by size (:meth:`resolve`; what a new gallery
    gets when no index is given). ``storage``: ``fp32``, ``fp16``, ``sq8`` (8-bit scalar
    quantisation, 4x smaller than fp32), ``pq`` (product quantisation, ``pq_m`` bytes
    per template) or ``pq4`` (4-bit fast-scan PQ, ``pq_m / 2`` bytes per template; ``pq_m``
    even, searched with FAISS's SIMD scan). ``rerank`` scores every template of the shortlisted identities
    exactly against the fp32 embeddings kept in the store (any approximate index: an
    identity found by one of its templates gets its exact score). Kinds that need training (IVF, SQ8, PQ) use an exact
    flat index until the gallery holds ``min_train`` templates, then the index is
    rebuilt and trained on the stored embeddings (in the background: the old index
    serves meanwhile). ``search_threads``: FAISS threads per search call; ``None``
    chooses per call (one thread below ``PARALLEL_MIN_BATCH`` probes, every core from
    there), ``0`` leaves FAISS's own setting alone. ``nlist_scale``: with ``nlist`` unset,
    IVF gets ``nlist_scale * sqrt(N)`` lists (at most N/39). ``nprobe_fraction``: when set,
    IVF searches that fraction of its lists (instead of a fixed ``nprobe``), so recall holds
    as retraining adds lists. ``rerank_from``: when set, the re-rank width grows with the
    gallery above that many templates, ``rerank_factor * sqrt(N / rerank_from)`` (rounded up,
    at most ``MAX_RERANK_FACTOR``): among more identities the right one falls below a fixed
    shortlist more often (:meth:`rerank_factor_for`).

    ``engine``: ``faiss`` (default; a FAISS-GPU mirror when ``device`` allows and the GPU
    probe passes) or ``torch`` (:class:`~facematch.gallery.torch_index.TorchIndex`: a flat
    matrix on a CUDA GPU through PyTorch, for machines without FAISS-GPU; ``device`` ``auto``
    uses CUDA when torch sees it). See docs/gpu.md.
    """

    kind: IndexKind = "flat"
    storage: Storage = "fp32"
    nlist: int | None = None  # IVF lists; None = min(nlist_scale*sqrt(N), N/39) at training time
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
    nlist_scale: float = 4.0
    nprobe_fraction: float | None = None
    rerank_from: int | None = None

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
        if (
            isinstance(self.nlist_scale, bool)
            or not isinstance(self.nlist_scale, (int, float))
            or not (0 < self.nlist_scale <= 64)
        ):
            raise InvalidArgumentError(f"nlist_scale must be a number in (0, 64], got {self.nlist_scale!r}")
        frac = self.nprobe_fraction
        if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1):
            raise InvalidArgumentError(f"nprobe_fraction must be None or a number in (0, 1], got {frac!r}")
        grow = self.rerank_from
        if grow is not None and (not isinstance(grow, int) or isinstance(grow, bool) or grow < 1):
            raise InvalidArgumentError(f"rerank_from must be None or a positive integer, got {grow!r}")
        if self.rerank_factor > MAX_RERANK_FACTOR:
            raise InvalidArgumentError(f"rerank_factor must be at most {MAX_RERANK_FACTOR}, got {self.rerank_factor}")
        if self.storage == "pq4" and self.pq_m % 2:
            raise InvalidArgumentError(f"storage='pq4' packs 2 codes a byte: pq_m must be even, not {self.pq_m}")
        threads = self.search_threads
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
            raise InvalidArgumentError(f"search_threads must be None or an integer >= 0, got {threads!r}")

    @classmethod
    def auto(cls, **kwargs: Any) -> IndexConfig:
        """The size-dependent default (``kind="auto"``); ``device`` and ``search_threads`` may be given."""
        return cls(kind="auto", **kwargs)

    def resolve(self, dim: int | None = None) -> IndexConfig:
        """The concrete structure behind this configuration (``self`` unless ``kind="auto"``).

        ``auto`` is exact flat fp32 below ``AUTO_FLAT_MAX`` templates, and from there IVF
        over 4-bit fast-scan PQ codes (``pq_m = dim / 4``, ``dim / 8`` bytes a template) with
        an exact re-rank: ``nlist = sqrt(N)`` at each training (retrained about every 4x
        growth), ``AUTO_NPROBE_FRACTION`` (0.35) of the lists searched, every template of
        ``AUTO_RERANK_FACTOR`` (4) x the shortlisted identities re-scored up to ``AUTO_RERANK_FROM``
        (1M) templates, the width growing as ``sqrt(N / 1M)`` above. Embedding dimensions that
        are not a multiple of 8 get SQ8 codes instead. The torch engine is exact flat at any size.
        """
        if self.kind != "auto":
            return self
        if self.engine == "torch":
            return replace(self, kind="flat", storage="fp32")
        d = dim or 512  # the dimension unknown yet: the default embedder's
        pq_m = d // AUTO_PQ_DIMS_PER_CODE
        storage: Storage = "pq4" if d % (2 * AUTO_PQ_DIMS_PER_CODE) == 0 else "sq8"
        return replace(
            self,
            kind="ivf",
            storage=storage,
            pq_m=pq_m if storage == "pq4" else self.pq_m,
            nlist=None,
            nlist_scale=AUTO_NLIST_SCALE,
            nprobe_fraction=AUTO_NPROBE_FRACTION,
            rerank=True,
            rerank_factor=AUTO_RERANK_FACTOR,
            rerank_from=AUTO_RERANK_FROM,
            min_train=AUTO_FLAT_MAX,
        )

    def choice_reason(self) -> str:
        """Why this configuration is the one in use (for the gallery's record and ``info()``)."""
        if self.kind != "auto":
            return f"explicit: {self.describe()}"
        return (
            f"auto: exact flat fp32 below {AUTO_FLAT_MAX:,} templates (a one-probe scan costs a few ms there); "
            f"from {AUTO_FLAT_MAX:,}, IVF over 4-bit fast-scan PQ codes (dim/8 bytes a template) with "
            f"nlist = sqrt(N) retrained at each 4x growth, {AUTO_NPROBE_FRACTION:g} of the lists searched and "
            f"an exact fp32 re-rank of every template of {AUTO_RERANK_FACTOR}x the shortlisted identities, "
            f"growing as sqrt(N / {AUTO_RERANK_FROM:,}) above {AUTO_RERANK_FROM:,} templates "
            "(chosen from benchmarks/bench_gallery_scale.py on galleries fitted to celeb24: "
            "benchmarks/README.md, 'Gallery at scale')"
        )

    @property
    def needs_training(self) -> bool:
        return self.engine == "faiss" and (self.kind == "ivf" or self.storage in ("sq8", "pq", "pq4"))

    @property
    def exact(self) -> bool:
        """True when search scores equal exact cosine similarity (flat fp32, or any kind re-ranked)."""
        return (self.kind == "flat" and self.storage == "fp32") or self.rerank

    def nlist_for(self, n: int) -> int:
        if self.nlist is not None:
            return self.nlist
        # nlist_scale*sqrt(N) lists, but no more than N/39 (FAISS' k-means wants >= 39 points per centroid)
        return int(max(1, min(65536, round(self.nlist_scale * math.sqrt(max(n, 1))), n // 39)))

    def nprobe_for(self, nlist: int) -> int:
        """Lists an IVF of ``nlist`` lists searches: ``nprobe``, or ``nprobe_fraction`` of them."""
        if self.nprobe_fraction is not None:
            return max(1, min(nlist, math.ceil(self.nprobe_fraction * nlist)))
        return min(self.nprobe, nlist)

    def rerank_factor_for(self, n_templates: int) -> int:
        """The re-rank width at ``n_templates``: ``rerank_factor``, grown above ``rerank_from``."""
        if self.rerank_from is None or n_templates <= self.rerank_from:
            return self.rerank_factor
        return min(MAX_RERANK_FACTOR, math.ceil(self.rerank_factor * math.sqrt(n_templates / self.rerank_from)))

    def factory_string(self, n: int) -> str:
        """FAISS ``index_factory`` description of the inner index for ``n`` training vectors."""
        # "np": no polysemous training (a slow code reordering only Hamming-filtered search uses)
        codec = {
            "fp32": "Flat",
            "fp16": "SQfp16",
            "sq8": "SQ8",
            "pq": f"PQ{self.pq_m}np",
            "pq4": f"PQ{self.pq_m}x4fs",
        }[self.storage]
        if self.kind == "flat":
            return codec
        if self.kind == "ivf":
            return f"IVF{self.nlist_for(n)},{codec}"
        return f"HNSW{self.hnsw_m}" if self.storage == "fp32" else f"HNSW{self.hnsw_m},{codec}"

    def describe(self) -> str:
        if self.kind == "auto":
            return "auto"
        storage = {"pq": f"pq{self.pq_m}", "pq4": f"pq{self.pq_m}x4"}.get(self.storage, self.storage)
        parts: list[str] = [self.kind, storage]
        if self.kind == "ivf":
            if self.nlist is not None:
                parts.append(f"nlist={self.nlist}")
            elif self.nlist_scale != 4.0:
                parts.append(f"nlist={self.nlist_scale:g}*sqrt(N)")
            frac = self.nprobe_fraction
            parts.append(f"nprobe={self.nprobe}" if frac is None else f"nprobe={frac:g}*nlist")
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
        if self.storage in ("pq", "pq4"):  # only where it matters, so indexes saved before PQ existed still load
            key["pq_m"] = self.pq_m
        if self.nlist_scale != 4.0:  # likewise for the nlist rule
            key["nlist_scale"] = self.nlist_scale
        return key


__all__ = [
    "AGGREGATIONS",
    "AUTO_FLAT_MAX",
    "AUTO_NLIST_SCALE",
    "AUTO_NPROBE_FRACTION",
    "AUTO_PQ_DIMS_PER_CODE",
    "AUTO_RERANK_FACTOR",
    "AUTO_RERANK_FROM",
    "ENGINES",
    "MAX_RERANK_FACTOR",
    "Aggregation",
    "Device",
    "Engine",
    "IndexConfig",
    "IndexKind",
    "Storage",
]
