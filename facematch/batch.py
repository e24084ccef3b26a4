"""Batch verification: many pairs, each distinct image prepared and embedded once.

The steps are the matcher's own (``prepare`` → ``embed_crops`` → ``compare``); this module
holds what sits between them when many pairs share images:

- :func:`distinct_images`: image pairs → the distinct images and index pairs into them
  (the same path, the same bytes or the same object is one image);
- :func:`check_index_pairs`: index pairs validated against the number of images;
- :func:`embedded_images`: prepared images (or their errors) + one embedding row per
  prepared image (+ their qualities and a quality policy) → one :class:`FaceEmbedding` (or
  error: a face below the policy is a ``LowQualityError``) per image;
- :func:`verify_pairs`: the per-pair decisions, a :class:`VerifyBatchResult` in which a
  failed image fails only the pairs that use it.

:meth:`FaceMatcher.verify_many <facematch.matcher.FaceMatcher.verify_many>` composes them in
the SDK; the server runs the same steps in its own threads and batcher (``POST /verify/batch``).
"""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import FacematchError, InvalidArgumentError
from .types import FaceEmbedding, PairResult, PreparedImage, VerifyBatchResult

if TYPE_CHECKING:
    from .matcher import FaceMatcher
    from .quality import FaceQuality, QualityPolicy

Embedded = FaceEmbedding | FacematchError | None  # None: an image no pair uses


def image_key(image: Any) -> Hashable:
    """What makes two inputs the same image: the absolute path, the bytes' digest, else the object itself."""
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.path.abspath(os.fspath(image)))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ("bytes", hashlib.blake2b(bytes(image), digest_size=20).digest())
    return ("object", id(image))


def distinct_images(pairs: Sequence[Sequence[Any]]) -> tuple[list[Any], list[tuple[int, int]]]:
    """(distinct images in first-seen order, one index pair per input pair)."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise InvalidArgumentError("pairs must be a sequence of (image1, image2) pairs")
    images: list[Any] = []
    index: dict[Hashable, int] = {}
    out: list[tuple[int, int]] = []
    for n, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidArgumentError(f"pairs[{n}] must be a pair (image1, image2)")
        ij = []
        for image in pair:
            key = image_key(image)
            if key not in index:
                index[key] = len(images)
                images.append(image)
            ij.append(index[key])
        out.append((ij[0], ij[1]))
    return images, out


def check_index_pairs(pairs: Sequence[Sequence[object]], n_images: int) -> list[tuple[int, int]]:
    """Index pairs as ``(i, j)`` tuples, each index in ``[0, n_images)``, or ``InvalidArgumentError``."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise InvalidArgumentError("pairs must be a sequence of (i, j) index pairs")
    out = []
    for n, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidArgumentError(f"pairs[{n}] must be two image indices", pair=n)
        ij = []
        for v in pair:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= int(v) < n_images:
                raise InvalidArgumentError(
                    f"pairs[{n}]: {v!r} is not an image index in [0, {n_images})", pair=n, images=n_images
                )
            ij.append(int(v))
        out.append((ij[0], ij[1]))
    return out


def used_images(pairs: Sequence[tuple[int, int]], n_images: int) -> list[bool]:
    """Which of ``n_images`` images some pair uses (the others need no work)."""
    used = [False] * n_images
    for i, j in pairs:
        used[i] = used[j] = True
    return used


def embedded_images(
    prepared: Sequence[PreparedImage | FacematchError | None],
    embeddings: np.ndarray,
    model_id: str,
    qualities: Sequence[FaceQuality] | None = None,
    gate: QualityPolicy | None = None,
) -> list[Embedded]:
    """One :class:`FaceEmbedding` (of ``crops[0]``), error or ``None`` per image.

    ``embeddings`` (and ``qualities``, when given) have one row per :class:`PreparedImage` item
    of ``prepared``, in order. With a quality policy ``gate`` (which needs ``qualities``), an
    image whose face fails it becomes its :class:`~facematch.quality.LowQualityError` (the
    failing components in ``details["reasons"]``), so it fails only the pairs that use it.
    """
    n_prepared = sum(isinstance(p, PreparedImage) for p in prepared)
    if len(embeddings) != n_prepared:
        raise InvalidArgumentError(f"{len(embeddings)} embeddings for {n_prepared} prepared images")
    if qualities is not None and len(qualities) != n_prepared:
        raise InvalidArgumentError(f"{len(qualities)} qualities for {n_prepared} prepared images")
    if gate is not None and gate.limits and qualities is None:
        raise InvalidArgumentError("a quality gate needs the faces' qualities")
    out: list[Embedded] = []
    row = 0
    for item in prepared:
        if isinstance(item, PreparedImage):
            quality = qualities[row] if qualities is not None else None
            embedded: Embedded = FaceEmbedding(
                face=item.face(0), vector=embeddings[row], model_id=model_id, quality=quality
            )
            if gate is not None and quality is not None:
                try:
                    gate.require(quality)
                except FacematchError as exc:  # LowQualityError
                    embedded = exc
            out.append(embedded)
            row += 1
        else:
            out.append(item)
    return out


def verify_pairs(
    matcher: FaceMatcher,
    pairs: Sequence[tuple[int, int]],
    images: Sequence[Embedded],
    *,
    threshold: float | None = None,
    fmr: float | None = None,
) -> VerifyBatchResult:
    """Decide every pair with :meth:`FaceMatcher.compare` at one threshold.

    A pair whose image failed gets that image's error (``image1`` first), relabelled with
    the side it is on; every other pair gets its :class:`VerifyResult`.
    """
    thr, target = matcher.resolve_threshold(threshold, fmr)
    out = []
    for n, (i, j) in enumerate(pairs):
        a, b = images[i], images[j]
        failed = next(((side, e) for side, e in ((1, a), (2, b)) if not isinstance(e, FaceEmbedding)), None)
        if failed is not None:
            side, err = failed
            if not isinstance(err, FacematchError):
                raise InvalidArgumentError(f"image {i if side == 1 else j} of pair {n} was not prepared")
            out.append(PairResult(n, i, j, error=err.about(f"image{side}", pair=n)))
            continue
        assert isinstance(a, FaceEmbedding) and isinstance(b, FaceEmbedding)
        result = replace(matcher.compare(a, b, threshold=thr), target_fmr=target)
        out.append(PairResult(n, i, j, result=result))
    return VerifyBatchResult(
        pairs=tuple(out),
        threshold=thr,
        target_fmr=target,
        model_id=matcher.model_id,
        images=sum(isinstance(e, (FaceEmbedding, FacematchError)) for e in images),
    )


__all__ = [
    "Embedded",
    "check_index_pairs",
    "distinct_images",
    "embedded_images",
    "image_key",
    "used_images",
    "verify_pairs",
]
