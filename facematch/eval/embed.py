"""Embedding a list of image files for evaluation: aligned crops or detect + align, with a cache.

Images go through the SDK's own steps, ``FaceMatcher.prepare`` (decode, then detect →
largest face → align, or the image taken as an aligned crop) and ``FaceMatcher.embed_crops``
(batched), so an evaluation measures exactly what ``embed`` and ``verify`` compute.

Every image gives an outcome: an embedding, or a failure (no face, unreadable or
undecodable file) that the reports list separately. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FacematchError
from .cache import CachedEmbedding, EmbeddingCache, content_hash

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFailure:
    """An image that gave no embedding, and why (``no_face``, ``unreadable``, ``invalid_image``...)."""

    path: str
    status: str
    message: str


@dataclass(frozen=True)
class EmbeddedSet:
    """Embeddings of ``paths``: row ``i`` of ``vectors`` is valid where ``ok[i]``."""

    paths: list[Path]
    vectors: np.ndarray  # (N, dim) float32, zeros where not ok
    norms: np.ndarray  # (N,) pre-normalisation feature norms, NaN where not ok
    ok: np.ndarray  # (N,) bool
    failures: list[ImageFailure]
    n_from_cache: int
    model_id: str
    dim: int


def pipeline_key(matcher: Any, detect: bool) -> str:
    """Everything that decides an image's embedding besides its bytes: models, preprocessing, detection settings."""
    card = matcher.embedder_card
    spec = hashlib.sha256(card.input.model_dump_json().encode()).hexdigest()[:12]
    key = f"v2|emb={card.id}@{card.sha256}|input={spec}"  # v2: one to_blob for every card (0.2)
    if detect:
        det = matcher.detector_card
        settings = ("det_size", "det_threshold", "coarse_det_size", "min_coarse_face", "decode_max_side", "max_pixels")
        key += f"|det={det.id}@{det.sha256}|" + "|".join(f"{k}={getattr(matcher, k, None)}" for k in settings)
    return key


def norms_available(card: Any) -> bool:
    """Whether a model exposes a meaningful pre-normalisation feature norm."""
    spec = card.embedding
    return spec is not None and (spec.norm_output_index is not None or not spec.normalized_output)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    # disable=None: on only when stderr is a terminal
    return tqdm(total=total, desc=desc, unit="img", disable=None if enabled else True, leave=False)


def prepare_file(matcher: Any, data: bytes, detect: bool) -> Any:
    """The one preparation of an evaluation image: the SDK's ``prepare``, largest face or the image as an aligned crop.

    Returns the :class:`~facematch.types.PreparedImage` (its ``crops[0]`` is what is embedded);
    raises the image's ``FacematchError``.
    """
    return matcher.prepare(data, "largest" if detect else None, aligned=not detect)


def _prepare(matcher: Any, data: bytes, detect: bool) -> np.ndarray | CachedEmbedding:
    """The one crop an image gives (:func:`prepare_file`), or its failure."""
    try:
        prep = prepare_file(matcher, data, detect)
    except FacematchError as exc:  # no_face, not_aligned, invalid_image...
        return CachedEmbedding(exc.code, None, None, exc.message)
    crop: np.ndarray = prep.crops[0]
    return crop


def _embed_batch(matcher: Any, blobs: list[bytes], detect: bool) -> list[CachedEmbedding]:
    """``prepare`` each image, then ``embed_crops`` on all the crops at once: ``FaceMatcher.embed``, batched."""
    prepared = [_prepare(matcher, data, detect) for data in blobs]
    crops = [p for p in prepared if isinstance(p, np.ndarray)]
    if not crops:
        return [p for p in prepared if isinstance(p, CachedEmbedding)]
    vectors, norms = matcher.embed_crops(np.stack(crops))
    done = iter(zip(vectors, norms, strict=True))
    out = []
    for p in prepared:
        if isinstance(p, CachedEmbedding):
            out.append(p)
        else:
            v, n = next(done)
            out.append(CachedEmbedding("ok", v, float(n)))
    return out


def embed_files(
    matcher: Any,
    paths: Sequence[Path],
    *,
    detect: bool = False,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> EmbeddedSet:
    """Embed image files with ``matcher`` (largest face when ``detect``, else aligned crops), reusing cached results."""
    paths = [Path(p) for p in paths]
    dim = int(matcher.dim)
    key = pipeline_key(matcher, detect)
    results: list[CachedEmbedding | None] = [None] * len(paths)
    hashes: list[str | None] = [None] * len(paths)
    blobs: dict[int, bytes] = {}
    for i, p in enumerate(paths):
        try:
            data = p.read_bytes()
        except OSError as exc:
            results[i] = CachedEmbedding("unreadable", None, None, f"cannot read {p}: {exc.strerror or exc}")
            continue
        hashes[i] = content_hash(data)
        blobs[i] = data
    cached = cache.get_many([h for h in hashes if h], key) if cache is not None else {}
    todo = []
    n_cached = 0
    for i, h in enumerate(hashes):
        if h is not None and h in cached:
            results[i] = cached[h]
            n_cached += 1
        elif h is not None:
            todo.append(i)
    if todo:
        logger.info("embedding %d images (%d from cache) with %s", len(todo), n_cached, matcher.model_id)
        fresh: list[tuple[str, CachedEmbedding]] = []
        with _progress(len(todo), "detect+embed" if detect else "embed", progress) as bar:
            for start in range(0, len(todo), batch_size):
                idx = todo[start : start + batch_size]
                outs = _embed_batch(matcher, [blobs[i] for i in idx], detect)
                for i, o in zip(idx, outs, strict=True):
                    results[i] = o
                    h = hashes[i]
                    assert h is not None
                    fresh.append((h, o))
                bar.update(len(idx))
        if cache is not None:
            cache.put_many(key, fresh)
    vectors = np.zeros((len(paths), dim), np.float32)
    norms = np.full(len(paths), np.nan, np.float32)
    ok = np.zeros(len(paths), bool)
    failures = []
    for i, r in enumerate(results):
        assert r is not None
        if r.status == "ok" and r.vector is not None and r.vector.size == dim:
            vectors[i] = r.vector
            norms[i] = np.nan if r.norm is None else r.norm
            ok[i] = True
        else:
            failures.append(ImageFailure(str(paths[i]), r.status, r.message))
    return EmbeddedSet(paths, vectors, norms, ok, failures, n_cached, matcher.model_id, dim)


__all__ = ["EmbeddedSet", "ImageFailure", "embed_files", "norms_available", "pipeline_key", "prepare_file"]
