"""Pictures of an :class:`~facematch.explain.Explanation`: heatmap PNGs and a one-page figure.

One diverging colour scale everywhere (ColorBrewer RdBu, reversed): red cells speak for the
match, blue ones against it, and the colour's strength is shared by both faces of a pair, so
the two maps can be compared. The PNG helpers need only OpenCV (the server uses them); the
figure of ``facematch explain`` and of the evaluation report needs matplotlib (the ``eval``
extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BackendUnavailableError

if TYPE_CHECKING:
    from .explain import Explanation, FaceExplanation
    from .io import DecodedImage

# ColorBrewer RdBu (11 classes), blue → white → red, as RGB
_ANCHORS = np.array(
    [
        (5, 48, 97),
        (33, 102, 172),
        (67, 147, 195),
        (146, 197, 222),
        (209, 229, 240),
        (247, 247, 247),
        (253, 219, 199),
        (244, 165, 130),
        (214, 96, 77),
        (178, 24, 43),
        (103, 0, 31),
    ],
    np.float64,
)
ALPHA_MAX = 0.75  # the strongest cell covers the photo this much
ALPHA_GAMMA = 0.7  # < 1: moderate cells stay visible
ALPHA_FLOOR = 0.04  # values below this share of the scale stay transparent


def colour_table() -> np.ndarray:
    """(256, 3) uint8 RGB: index 0 is −scale, 128 is zero, 255 is +scale."""
    pos = np.linspace(0, len(_ANCHORS) - 1, 256)
    table = np.stack([np.interp(pos, np.arange(len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1)
    out: np.ndarray = np.round(table).astype(np.uint8)
    return out


def colour_scale(explanation: Explanation) -> float:
    """The value shown at full colour: the largest |cell| of the pair (never 0)."""
    vmax = max(float(np.abs(f.cells).max()) if f.cells.size else 0.0 for f in explanation.faces)
    return vmax if vmax > 0 else 1.0


def heat_rgba(values: np.ndarray, scale: float) -> np.ndarray:
    """(h, w, 4) uint8 RGBA: colour from the value, opacity from its size (0 is transparent)."""
    v = np.clip(np.asarray(values, np.float64) / scale, -1.0, 1.0)
    rgb = colour_table()[np.round((v + 1.0) * 127.5).astype(np.int64)]
    strength = np.clip((np.abs(v) - ALPHA_FLOOR) / (1.0 - ALPHA_FLOOR), 0.0, 1.0)
    alpha = np.round(255 * ALPHA_MAX * strength**ALPHA_GAMMA).astype(np.uint8)
    out: np.ndarray = np.concatenate([rgb, alpha[..., None]], axis=-1)
    return out


def blend(bgr: np.ndarray, values: np.ndarray, scale: float) -> np.ndarray:
    """``bgr`` (h, w, 3) uint8 with the heatmap of ``values`` (h, w) laid over it."""
    rgba = heat_rgba(values, scale).astype(np.float64)
    a = rgba[..., 3:] / 255.0
    over = rgba[..., 2::-1]  # RGB -> BGR
    out: np.ndarray = np.round(bgr.astype(np.float64) * (1 - a) + over * a).astype(np.uint8)
    return out


def png(rgb_or_rgba: np.ndarray) -> bytes:
    """PNG bytes of an RGB or RGBA uint8 image."""
    import cv2

    img = np.asarray(rgb_or_rgba)
    code = cv2.COLOR_RGBA2BGRA if img.shape[-1] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, code))
    if not ok:  # pragma: no cover - OpenCV always encodes PNG
        raise RuntimeError("PNG encoding failed")
    return bytes(buf)


def downscaled(values: np.ndarray, max_side: int) -> np.ndarray:
    """``values`` resized (area) so its long side is at most ``max_side``."""
    import cv2

    h, w = values.shape[:2]
    if max(h, w) <= max_side or min(h, w) == 0:
        return values
    f = max_side / max(h, w)
    return cv2.resize(values, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


# ---- the figure ------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise BackendUnavailableError(
            "drawing an explanation needs matplotlib: pip install 'facematch[eval]' (or use --json)"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def face_view(side: FaceExplanation, photo: DecodedImage | None, scale: float) -> np.ndarray:
    """RGB view of one face: the photo around the crop's footprint with the map laid over it.

    Without a photo (or for an aligned input) the aligned crop with its crop map.
    """
    import cv2

    x0, y0, x1, y1 = side.image_box
    if photo is None or side.face is None or x1 <= x0 or y1 <= y0:
        view = blend(side.crop, side.crop_map, scale)
    else:
        sx, sy = photo.scale  # original = decoded × scale
        px = photo.pixels
        dx0, dy0 = int(np.floor(x0 / sx)), int(np.floor(y0 / sy))
        dx1 = min(px.shape[1], max(dx0 + 1, int(np.ceil(x1 / sx))))
        dy1 = min(px.shape[0], max(dy0 + 1, int(np.ceil(y1 / sy))))
        region = px[dy0:dy1, dx0:dx1]
        heat = cv2.resize(side.image_map, (region.shape[1], region.shape[0]), interpolation=cv2.INTER_LINEAR)
        view = blend(region, heat, scale)
        if max(view.shape[:2]) < 224:  # small faces: enlarge for the page
            f = 224 / max(view.shape[:2])
            view = cv2.resize(view, (round(view.shape[1] * f), round(view.shape[0] * f)), interpolation=cv2.INTER_CUBIC)
    out: np.ndarray = view[..., ::-1]
    return out


def _title(expl: Explanation) -> str:
    verdict = "MATCH" if expl.is_match else "NO MATCH"
    op = "≥" if expl.is_match else "<"
    fmr = f" (FMR {expl.result.target_fmr:g})" if expl.result.target_fmr is not None else ""
    return f"{verdict}: similarity {expl.similarity:.3f} {op} threshold {expl.threshold:.3f}{fmr}"


def _method_line(expl: Explanation) -> str:
    if expl.method == "decomposition":
        return (
            f"exact decomposition of the cosine over the last feature map "
            f"(check: residual {expl.residual:.1e}) · model {expl.result.model_id}"
        )
    why = f" · decomposition unavailable: {expl.fallback_reason}" if expl.fallback_reason else ""
    line = f"occlusion: similarity lost when each cell is covered · model {expl.result.model_id}{why}"
    return line if len(line) <= 150 else line[:147] + "…"


def figure(
    expl: Explanation,
    path: str | Path,
    photos: Sequence[DecodedImage | None] = (None, None),
    labels: Sequence[str] = ("image 1", "image 2"),
    dpi: int = 110,
) -> Path:
    """Write the one-page picture of ``expl`` to ``path`` (PNG, or any format matplotlib writes).

    Both faces with their maps side by side, the shared colour bar, the similarity against
    the threshold, and each face's region shares.
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap, Normalize

    scale = colour_scale(expl)
    cmap = ListedColormap(colour_table() / 255.0)
    fig = plt.figure(figsize=(9.6, 7.0), dpi=dpi)
    grid = fig.add_gridspec(
        3,
        3,
        width_ratios=[1, 1, 0.05],
        height_ratios=[0.2, 1, 0.36],
        hspace=0.32,
        wspace=0.3,
        left=0.07,
        right=0.9,
        bottom=0.05,
        top=0.88,
    )
    fig.suptitle(_title(expl), fontsize=15, fontweight="bold", color="#1a7f37" if expl.is_match else "#b3261e", y=0.975)
    fig.text(0.5, 0.93, _method_line(expl), ha="center", fontsize=8.5, color="0.3")

    gauge = fig.add_subplot(grid[0, 0:2])
    _gauge(gauge, expl)
    for k, (side, photo, label) in enumerate(zip(expl.faces, photos, labels, strict=True)):
        ax = fig.add_subplot(grid[1, k])
        ax.imshow(face_view(side, photo, scale))
        ax.set_title(label if len(label) <= 48 else "…" + label[-47:], fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        _region_bars(fig.add_subplot(grid[2, k]), side)
    cax = fig.add_subplot(grid[1, 2])
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=Normalize(-scale, scale), cmap=cmap), cax=cax)
    what = "contribution to the similarity per cell" if expl.method == "decomposition" else "similarity lost if covered"
    bar.set_label(f"{what}\n(red: for the match, blue: against)", fontsize=8.5)
    bar.ax.tick_params(labelsize=8)
    out = Path(path)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _gauge(ax: Any, expl: Explanation) -> None:
    """A horizontal bar: the similarity on [−0.2, 1] with the threshold marked."""
    lo, hi = -0.2, 1.0
    colour = "#1a7f37" if expl.is_match else "#b3261e"
    ax.barh([0], [min(max(expl.similarity, lo), hi) - lo], left=lo, height=0.6, color=colour, alpha=0.85)
    ax.axvline(expl.threshold, color="black", lw=2)
    ax.text(expl.threshold, 0.55, f" threshold {expl.threshold:.3f}", va="bottom", fontsize=8.5)
    ax.text(
        min(max(expl.similarity, lo), hi),
        0,
        f" {expl.similarity:.3f}",
        va="center",
        fontsize=9,
        fontweight="bold",
        color=colour if expl.similarity < lo + 0.05 or expl.similarity > hi - 0.12 else "black",
        ha="right" if expl.similarity > hi - 0.12 else "left",
    )
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.5, 1.2)
    ax.set_yticks([])
    ax.set_xlabel("cosine similarity", fontsize=8.5)
    ax.tick_params(labelsize=8)
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)


def _region_bars(ax: Any, side: FaceExplanation) -> None:
    """Signed bars of the region shares around zero; the numbers in a column on the right."""
    names = [r.region for r in side.regions]
    shares = [100.0 * r.share for r in side.regions]
    colours = ["#b2182b" if s >= 0 else "#2166ac" for s in shares]
    y = np.arange(len(names))[::-1]
    ax.barh(y, shares, color=colours, height=0.65)
    for yy, s, r in zip(y, shares, side.regions, strict=True):
        ax.text(178, yy, f"{s:+.0f}%  ({r.contribution:+.3f})", va="center", ha="right", fontsize=8.5)
    ax.set_yticks(y, names, fontsize=9)
    ax.set_xlim(-100, 180)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_xticks([-100, -50, 0, 50, 100], ["−100%", "", "0", "", "100%"], fontsize=7, color="0.4")
    ax.set_title("share of the map by region (contribution)", fontsize=8.5, color="0.3")
    for name in ("top", "right"):
        ax.spines[name].set_visible(False)


__all__ = ["blend", "colour_scale", "colour_table", "downscaled", "face_view", "figure", "heat_rgba", "png"]
