"""Explain a match: which parts of the two faces made them similar.

Two methods, one result type (:class:`Explanation`):

* ``decomposition`` (exact): the embedding heads we serve are affine in the last feature map
  ``F`` (``C×H×W``): ``e = A·vec(F) + b``. So the cosine splits into one term per spatial
  position, ``(A_p F1_p) · ê2 / ‖e1‖``, plus a bias term ``b · ê2 / ‖e1‖`` (and symmetrically
  for image 2). The terms come from evaluating the head with one position kept at a time; the
  card's ``explain`` block names ``F`` (:mod:`facematch.explain_graph`). Every pair is checked:
  the terms plus the bias must reproduce the cosine within :data:`RESIDUAL_TOLERANCE`, else the
  decomposition is refused (``method="decomposition"``) or replaced (``method="auto"``).
* ``occlusion`` (any model): a neutral patch slides over each aligned crop, one position per
  feature cell; each cell's value is the drop in similarity when it is covered. It costs
  ``2·H·W`` extra embeddings.

Each cell's value is mapped to the pixels of the aligned crop (``crop_map``) and, through the
inverse alignment transform, into the original photo (``image_map`` over ``image_box``). The
regions (eyes, nose, mouth, rest) come from the alignment template, so they are the same
pixels of every aligned crop.

The pipeline is the SDK's: ``prepare`` (decode → detect → select → align) → feature maps
(the embedding and ``F`` from one run) or ``embed_crops`` → ``compare``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .align import TEMPLATES, alignment_matrix
from .errors import ExplanationUnavailableError, FacematchError, InvalidArgumentError
from .similarity import l2_normalize
from .types import Face, PreparedImage, VerifyResult

if TYPE_CHECKING:
    from .io import DecodedImage, ImageInput
    from .matcher import FaceMatcher

logger = logging.getLogger(__name__)

Method = Literal["decomposition", "occlusion"]
MethodChoice = Literal["auto", "decomposition", "occlusion"]
METHODS = ("auto", "decomposition", "occlusion")
RESIDUAL_TOLERANCE = 1e-4  # |Σ terms + bias − cosine| above this refuses the decomposition
REGIONS = ("eyes", "nose", "mouth", "rest")
OCCLUSION_PATCH_CELLS = 2  # the occluding patch is this many feature cells wide, centred on its cell
DEFAULT_CELL = 16  # crop pixels per occlusion cell when the card has no feature grid (112 / 16 = 7)


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionShare:
    """How much of an image's map falls in one facial region.

    ``contribution`` is the sum of the region's cell values (similarity units: for the
    decomposition, the regions plus the bias add up to the cosine; for occlusion, summed
    similarity drops). ``share`` is ``contribution / Σ |contribution over the regions|``:
    the regions' shares add up to 1 when all are positive, and a region that works against
    the match has a negative share.
    """

    region: str
    contribution: float
    share: float

    def to_dict(self) -> dict[str, Any]:
        return {"region": self.region, "contribution": round(self.contribution, 6), "share": round(self.share, 4)}


@dataclass(frozen=True)
class FaceExplanation:
    """One side of an explained pair: its face, its aligned crop and its maps.

    ``cells`` (H, W) are the per-position values on the feature grid: for the decomposition,
    each position's term of the cosine (``cells.sum() + bias`` is the similarity, within
    ``residual``); for occlusion, the drop in similarity when that cell is covered.
    ``crop_map`` is ``cells`` interpolated to the aligned crop's pixels; ``image_map`` the same
    map in the original photo's pixels, covering ``image_box`` = ``(x0, y0, x1, y1)`` (zero
    where the crop does not reach): :meth:`full_image_map` pastes it into a full-size array.
    For an aligned input ``face`` is ``None`` and the box is the whole image.
    """

    face: Face | None
    image_size: tuple[int, int]  # (width, height) of the original image
    crop: np.ndarray = field(repr=False)
    cells: np.ndarray = field(repr=False)
    bias: float
    crop_map: np.ndarray = field(repr=False)
    image_map: np.ndarray = field(repr=False)
    image_box: tuple[int, int, int, int]
    regions: tuple[RegionShare, ...]
    residual: float | None = None

    def region(self, name: str) -> RegionShare:
        for r in self.regions:
            if r.region == name:
                return r
        raise InvalidArgumentError(f"unknown region {name!r}; regions are {REGIONS}")

    def full_image_map(self) -> np.ndarray:
        """The map as a (height, width) float32 array of the original image size."""
        w, h = self.image_size
        out = np.zeros((h, w), np.float32)
        x0, y0, x1, y1 = self.image_box
        out[y0:y1, x0:x1] = self.image_map
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (cells, regions, box; the pixel maps stay out)."""
        return {
            "face": self.face.to_dict() if self.face is not None else None,
            "image_size": list(self.image_size),
            "image_box": list(self.image_box),
            "bias": round(self.bias, 6),
            "residual": self.residual,
            "cells": [[round(float(v), 6) for v in row] for row in self.cells],
            "regions": [r.to_dict() for r in self.regions],
        }


@dataclass(frozen=True)
class Explanation:
    """Why two faces are (not) a match: the verify result, the method used and one map per face.

    ``residual`` is the decomposition check (the larger of the two sides' ``|Σ terms + bias −
    cosine|``), ``None`` for occlusion. ``fallback_reason`` says why ``method="auto"`` used
    occlusion instead of the decomposition.
    """

    method: Method
    result: VerifyResult
    first: FaceExplanation
    second: FaceExplanation
    residual: float | None = None
    fallback_reason: str | None = None

    @property
    def similarity(self) -> float:
        return self.result.similarity

    @property
    def threshold(self) -> float:
        return self.result.threshold

    @property
    def is_match(self) -> bool:
        return self.result.is_match

    @property
    def faces(self) -> tuple[FaceExplanation, FaceExplanation]:
        return self.first, self.second

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(),
            "method": self.method,
            "residual": self.residual,
            "fallback_reason": self.fallback_reason,
            "explained": [self.first.to_dict(), self.second.to_dict()],
        }


# ---- regions and maps ---------------------------------------------------------------------------


@lru_cache(maxsize=8)
def region_labels(template: str = "arcface_112") -> np.ndarray:
    """(size, size) uint8 region of each aligned-crop pixel: 0 eyes, 1 nose, 2 mouth, 3 rest.

    Ellipses around the template's 5 points, sized by the inter-ocular distance ``d``: each
    eye (0.45d × 0.36d semi-axes, centred 0.05d above it), the nose from the bridge down
    (0.28d × 0.55d, centred 0.25d above its tip), the mouth (half its corner distance + 0.15d
    × 0.30d); eyes win over the nose, the nose over the mouth. Read-only (cached).
    """
    tpl, size = TEMPLATES[template]
    pts = tpl.astype(np.float64)
    left, right, nose, mouth_l, mouth_r = pts
    d = float(np.linalg.norm(right - left))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    def ellipse(c: np.ndarray, ax: float, ay: float) -> np.ndarray:
        out: np.ndarray = ((xx - c[0]) / ax) ** 2 + ((yy - c[1]) / ay) ** 2 <= 1.0
        return out

    labels = np.full((size, size), REGIONS.index("rest"), np.uint8)
    mouth_c = (mouth_l + mouth_r) / 2
    labels[ellipse(mouth_c, float(np.linalg.norm(mouth_r - mouth_l)) / 2 + 0.15 * d, 0.30 * d)] = 2
    labels[ellipse(nose - np.array([0.0, 0.25 * d]), 0.28 * d, 0.55 * d)] = 1
    up = np.array([0.0, 0.05 * d])
    labels[ellipse(left - up, 0.45 * d, 0.36 * d) | ellipse(right - up, 0.45 * d, 0.36 * d)] = 0
    labels.setflags(write=False)
    return labels


def cell_edges(length: int, cells: int) -> np.ndarray:
    """Pixel boundaries of ``cells`` equal cells over ``length`` pixels (``cells + 1`` ints)."""
    return np.round(np.linspace(0, length, cells + 1)).astype(int)


@lru_cache(maxsize=8)
def cell_region_fractions(template: str, grid: tuple[int, int]) -> np.ndarray:
    """(H·W, 4): the share of each feature cell's crop pixels in each region (rows sum to 1)."""
    labels = region_labels(template)
    h, w = grid
    ys, xs = cell_edges(labels.shape[0], h), cell_edges(labels.shape[1], w)
    out = np.zeros((h * w, len(REGIONS)), np.float64)
    for k in range(h * w):
        y, x = divmod(k, w)
        block = labels[ys[y] : ys[y + 1], xs[x] : xs[x + 1]]
        out[k] = np.bincount(block.reshape(-1), minlength=len(REGIONS)) / max(block.size, 1)
    out.setflags(write=False)
    return out


def region_shares(cells: np.ndarray, template: str) -> tuple[RegionShare, ...]:
    """The cells' values summed per region (each cell split by its pixels), with their shares."""
    frac = cell_region_fractions(template, (int(cells.shape[0]), int(cells.shape[1])))
    contrib = np.asarray(cells, np.float64).reshape(-1) @ frac
    total = float(np.abs(contrib).sum())
    return tuple(
        RegionShare(name, float(c), float(c / total) if total > 0 else 0.0)
        for name, c in zip(REGIONS, contrib, strict=True)
    )


def crop_map(cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cells`` (H, W) interpolated bilinearly (between cell centres) to a (height, width) crop map."""
    import cv2

    w, h = size
    return cv2.resize(np.asarray(cells, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def photo_map(
    cmap: np.ndarray, face: Face | None, template: str, image_size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A crop map in original-image pixels: (map over the box, box ``(x0, y0, x1, y1)``).

    For a detected face the crop's footprint is found through the inverse of the alignment
    transform of its landmarks; the map is warped only there. For an aligned input (no face)
    the crop is the whole image, resized back to its original size.
    """
    import cv2

    w, h = image_size
    ch, cw = cmap.shape
    if face is None:
        resized = cmap if (cw, ch) == (w, h) else cv2.resize(cmap, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.asarray(resized, np.float32), (0, 0, w, h)
    m = alignment_matrix(face.landmarks, template)  # original pixels -> crop pixels
    a, t = m[:, :2], m[:, 2]
    corners = np.array([[0, 0], [cw, 0], [0, ch], [cw, ch]], np.float64)
    back = (corners - t) @ np.linalg.inv(a).T
    x0, y0 = (max(0, int(np.floor(v))) for v in back.min(0))
    x1, y1 = min(w, int(np.ceil(back[:, 0].max()))), min(h, int(np.ceil(back[:, 1].max())))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32), (0, 0, 0, 0)
    shifted = m.copy()
    shifted[:, 2] = t + a @ np.array([x0, y0], np.float64)
    roi = cv2.warpAffine(
        np.asarray(cmap, np.float32),
        shifted,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    return roi, (x0, y0, x1, y1)


# ---- occlusion --------------------------------------------------------------------------------


def neutral_pixel(matcher: FaceMatcher) -> np.ndarray:
    """The BGR uint8 colour the embedder's preprocessing maps to zero (its mean)."""
    spec = matcher.embedder_card.input
    mean = np.asarray(spec.mean, np.float64)
    bgr = mean[::-1] if spec.color_order == "RGB" else mean
    out: np.ndarray = np.clip(np.round(bgr), 0, 255).astype(np.uint8)
    return out


def occlusion_grid(matcher: FaceMatcher) -> tuple[int, int]:
    """The cell grid occlusion uses: the card's feature grid, else 16-pixel cells."""
    spec = matcher.embedder_card.explain
    if spec is not None:
        return int(spec.feature_shape[1]), int(spec.feature_shape[2])
    w, h = matcher.embedder.size
    return max(1, h // DEFAULT_CELL), max(1, w // DEFAULT_CELL)


def occluded_crops(crop: np.ndarray, grid: tuple[int, int], fill: np.ndarray, patch_cells: int) -> np.ndarray:
    """(H·W, h, w, 3): ``crop`` with a patch ``patch_cells`` cells wide centred on each cell, filled."""
    h, w = crop.shape[:2]
    gh, gw = grid
    ys, xs = cell_edges(h, gh), cell_edges(w, gw)
    out = np.repeat(crop[None], gh * gw, axis=0)
    for k in range(gh * gw):
        y, x = divmod(k, gw)
        pad_y = (ys[y + 1] - ys[y]) * (patch_cells - 1) / 2
        pad_x = (xs[x + 1] - xs[x]) * (patch_cells - 1) / 2
        y0, y1 = max(0, int(round(ys[y] - pad_y))), min(h, int(round(ys[y + 1] + pad_y)))
        x0, x1 = max(0, int(round(xs[x] - pad_x))), min(w, int(round(xs[x + 1] + pad_x)))
        out[k, y0:y1, x0:x1] = fill
    return out


def occlusion_cells(
    matcher: FaceMatcher, crops: np.ndarray, embeddings: np.ndarray, patch_cells: int = OCCLUSION_PATCH_CELLS
) -> np.ndarray:
    """(2, H, W): for each crop and cell, the similarity lost when that cell is covered."""
    grid = occlusion_grid(matcher)
    fill = neutral_pixel(matcher)
    batch = np.concatenate([occluded_crops(c, grid, fill, patch_cells) for c in crops])
    occluded, _ = matcher.embed_crops(batch)
    e = embeddings.astype(np.float64)
    base = float(e[0] @ e[1])
    p = grid[0] * grid[1]
    drops = [base - occluded[i * p : (i + 1) * p].astype(np.float64) @ e[1 - i] for i in range(2)]
    return np.stack(drops).reshape(2, *grid)


# ---- explaining -------------------------------------------------------------------------------


def _side(
    prep: PreparedImage, cells: np.ndarray, bias: float, residual: float | None, template: str
) -> FaceExplanation:
    crop = prep.crops[0]
    face = prep.face(0)
    cmap = crop_map(cells, (crop.shape[1], crop.shape[0]))
    imap, box = photo_map(cmap, face, template, prep.image_size)
    return FaceExplanation(
        face=face,
        image_size=prep.image_size,
        crop=crop,
        cells=np.asarray(cells, np.float32),
        bias=float(bias),
        crop_map=cmap,
        image_map=imap,
        image_box=box,
        regions=region_shares(cells, template),
        residual=residual,
    )


def check_method(method: object) -> MethodChoice:
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {METHODS}, got {method!r}")
    return method  # type: ignore[return-value]


def explain_prepared(
    matcher: FaceMatcher,
    first: PreparedImage,
    second: PreparedImage,
    *,
    method: MethodChoice = "auto",
    threshold: float | None = None,
    fmr: float | None = None,
) -> Explanation:
    """Explain the comparison of the first face of two prepared images (see the module docstring)."""
    method = check_method(method)
    crops = np.concatenate([first.crops[:1], second.crops[:1]])
    faces = (first.face(0), second.face(0))
    template = matcher.embedder_card.alignment_template or "arcface_112"
    fallback: str | None = None
    if method != "occlusion":
        from .explain_graph import decomposer_for

        try:
            dec = decomposer_for(matcher.embedder)
            raw, feats = dec.features(crops)
            emb, _ = l2_normalize(raw)
            result = matcher.compare(emb[0], emb[1], threshold=threshold, fmr=fmr, face1=faces[0], face2=faces[1])
            parts = dec.decompose(feats, raw, result.similarity)
            worst = float(parts.residual.max())
            if not worst <= RESIDUAL_TOLERANCE:  # also refuses NaN
                raise ExplanationUnavailableError(
                    f"the decomposition of {matcher.model_id!r} does not reproduce the cosine: residual "
                    f"{worst:.3g} > {RESIDUAL_TOLERANCE:g}, so the head after {dec.spec.feature!r} is not affine",
                    residual=worst,
                )
        except ExplanationUnavailableError as exc:
            if method == "decomposition":
                raise
            fallback = exc.message
            logger.info("explain: falling back to occlusion: %s", exc.message)
        else:
            res = [float(r) for r in parts.residual]
            return Explanation(
                method="decomposition",
                result=result,
                first=_side(first, parts.cells[0], parts.bias[0], res[0], template),
                second=_side(second, parts.cells[1], parts.bias[1], res[1], template),
                residual=worst,
            )
    emb, _ = matcher.embed_crops(crops)
    result = matcher.compare(emb[0], emb[1], threshold=threshold, fmr=fmr, face1=faces[0], face2=faces[1])
    cells = occlusion_cells(matcher, crops, emb)
    return Explanation(
        method="occlusion",
        result=result,
        first=_side(first, cells[0], 0.0, None, template),
        second=_side(second, cells[1], 0.0, None, template),
        fallback_reason=fallback,
    )


def explain_images(
    matcher: FaceMatcher,
    image1: ImageInput | DecodedImage,
    image2: ImageInput | DecodedImage,
    *,
    method: MethodChoice = "auto",
    aligned: bool = False,
    threshold: float | None = None,
    fmr: float | None = None,
) -> Explanation:
    """``prepare`` both images (side by side, as ``verify`` does), then :func:`explain_prepared`."""
    check_method(method)
    matcher.resolve_threshold(threshold, fmr)  # refuse bad options before any work

    def prepare(image: ImageInput | DecodedImage, label: str) -> PreparedImage:
        try:
            return matcher.prepare(image, aligned=aligned)
        except FacematchError as exc:
            raise exc.about(label) from exc

    if matcher.workers < 2:
        first, second = prepare(image1, "image1"), prepare(image2, "image2")
    else:
        pending = matcher._thread_pool().submit(prepare, image2, "image2")
        try:
            first = prepare(image1, "image1")
        except BaseException:
            pending.cancel()
            raise
        second = pending.result()
    return explain_prepared(matcher, first, second, method=method, threshold=threshold, fmr=fmr)


__all__ = [
    "METHODS",
    "REGIONS",
    "RESIDUAL_TOLERANCE",
    "Explanation",
    "FaceExplanation",
    "Method",
    "MethodChoice",
    "RegionShare",
    "cell_region_fractions",
    "crop_map",
    "explain_images",
    "explain_prepared",
    "occlusion_cells",
    "photo_map",
    "region_labels",
    "region_shares",
]
