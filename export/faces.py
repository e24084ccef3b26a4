"""Folders of aligned face crops for calibration and validation (models get them through ``to_blob``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facematch.errors import InvalidArgumentError, InvalidImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class FaceSet:
    """Aligned BGR uint8 crops ``(N, H, W, 3)``, their files, and identity labels (``None`` for a flat folder)."""

    root: Path
    paths: tuple[Path, ...]
    crops: np.ndarray
    labels: tuple[str, ...] | None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: np.ndarray | list[int]) -> FaceSet:
        idx = np.asarray(idx, dtype=np.int64)
        labels = None if self.labels is None else tuple(self.labels[i] for i in idx)
        return FaceSet(self.root, tuple(self.paths[i] for i in idx), self.crops[idx], labels)


def list_faces(root: str | Path) -> tuple[list[Path], list[str] | None]:
    """Image files under ``root``: one subfolder per identity (labelled) or a flat folder (unlabelled)."""
    base = Path(root)
    if not base.is_dir():
        raise InvalidArgumentError(f"face folder not found: {base}")
    subdirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        files, labels = [], []
        for d in subdirs:
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    labels.append(d.name)
        return files, labels
    flat = sorted(f for f in base.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    return flat, None


def pack_faces(size: tuple[int, int] = (112, 112)) -> FaceSet | None:
    """Every face in the photos shipped with the default model pack, detected and aligned.

    The default set of real faces an export is checked on when no ``--images`` folder is
    given (unlabelled, so no TAR). ``None`` when the pack is not installed or the model
    does not take the ArcFace 112x112 template.
    """
    if size != (112, 112):
        return None
    from facematch.cards import DEFAULT_EMBEDDER
    from facematch.errors import FacematchError
    from facematch.matcher import FaceMatcher
    from facematch.model_files import load_card, resolve_model_path

    try:
        pack = resolve_model_path(load_card(DEFAULT_EMBEDDER)).parent
        matcher = FaceMatcher()
    except FacematchError as exc:
        logger.warning("no default model pack to take real faces from (%s)", exc)
        return None
    paths: list[Path] = []
    crops: list[np.ndarray] = []
    for photo in sorted(pack.glob("*.jpg")):
        decoded = matcher.load(photo)  # decoded once for detection and alignment
        faces = matcher.detect(decoded)
        if len(faces):
            crops.extend(matcher.align(decoded, faces))
            paths.extend(photo.with_name(f"{photo.name}#face{i}") for i in range(len(faces)))
    if not crops:
        return None
    return FaceSet(pack, tuple(paths), np.stack(crops), None)


def spread(n_total: int, n: int | None) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them when ``n`` is None or larger)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


def load_faces(root: str | Path, size: tuple[int, int] = (112, 112), limit: int | None = None) -> FaceSet:
    """Read aligned crops of ``size`` (width, height) from ``root``; ``limit`` picks files spread over the folder."""
    import cv2

    files, labels = list_faces(root)
    if not files:
        raise InvalidArgumentError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    idx = spread(len(files), limit)
    crops = np.empty((len(idx), size[1], size[0], 3), np.uint8)
    for out_i, i in enumerate(idx):
        img = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if img is None:
            raise InvalidImageError(f"cannot decode {files[i]}")
        if img.shape[:2] != (size[1], size[0]):
            raise InvalidImageError(
                f"{files[i]} is {img.shape[1]}x{img.shape[0]}, not an aligned {size[0]}x{size[1]} crop "
                "(align faces first, e.g. `facematch` align/embed with --aligned inputs)"
            )
        crops[out_i] = img
    picked_labels = None if labels is None else tuple(labels[i] for i in idx)
    logger.info("loaded %d aligned faces from %s", len(idx), root)
    return FaceSet(Path(root), tuple(files[i] for i in idx), crops, picked_labels)


def random_crops(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``n`` uniformly random uint8 BGR images of ``size`` (a check far from the calibration distribution)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size[1], size[0], 3), dtype=np.uint8)


__all__ = ["FaceSet", "list_faces", "load_faces", "random_crops", "spread"]
