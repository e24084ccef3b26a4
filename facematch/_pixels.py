"""The pixel paths of :mod:`facematch.io`: decoders and conversions to BGR uint8 that never hold a
full-size intermediate copy (row strips, integer alpha compositing, box reduction).

Private: :func:`facematch.io.probe_image` plans which path runs and what it costs, and
:meth:`facematch.io.DecodePlan.decode` runs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidImageError

STRIP_PIXELS = 1 << 19  # pixels converted at once on the strip path
_GREY_MODES = ("L", "1")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def strip_rows(width: int, reduce: int) -> int:
    """Rows converted at once on the strip path: about ``STRIP_PIXELS`` pixels, a multiple of ``reduce``."""
    rows = max(1, STRIP_PIXELS // max(width, 1))
    return max(reduce, rows // reduce * reduce)


def decode_jpeg(data: bytes, img: Any, reduce: int) -> np.ndarray:
    """libjpeg-turbo in strict mode (a warning such as 'premature end of data segment' is an error)."""
    import simplejpeg

    w, h = img.size
    min_w, min_h = -(-w // reduce), -(-h // reduce)
    try:
        if img.mode != "CMYK":
            out: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="BGR", min_width=min_w, min_height=min_h)
            return out
        cmyk = simplejpeg.decode_jpeg(data, colorspace="CMYK", min_width=min_w, min_height=min_h)
    except ValueError as exc:
        raise InvalidImageError(f"cannot decode JPEG (truncated or corrupt): {exc}") from exc
    from PIL import Image

    tile = getattr(img, "tile", None) or []
    if tile and tile[0].args and tile[0].args[0] == "CMYK;I":  # Adobe's inverted CMYK, as PIL reads it
        np.subtract(255, cmyk, out=cmyk)
    ch, cw = cmyk.shape[:2]
    return pil_to_bgr(Image.frombuffer("CMYK", (cw, ch), np.ascontiguousarray(cmyk), "raw", "CMYK", 0, 1), 1)


def decode_png(data: bytes, reduce: int) -> np.ndarray | None:
    """8-bit (or 16-bit, kept 8-bit) RGB or grey PNGs, by libpng through OpenCV, then reduced."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.ndim != 3:
        return None
    return _box_reduce(bgr, reduce) if reduce > 1 else bgr


def _box_reduce(arr: np.ndarray, reduce: int) -> np.ndarray:
    """(H, W, 3) uint8 averaged over ``reduce`` x ``reduce`` boxes (edges replicated): ceil(H/r) x ceil(W/r)."""
    import cv2

    h, w = arr.shape[:2]
    pad_h, pad_w = (-h) % reduce, (-w) % reduce
    if pad_h or pad_w:
        arr = cv2.copyMakeBorder(arr, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
    return cv2.resize(arr, ((w + pad_w) // reduce, (h + pad_h) // reduce), interpolation=cv2.INTER_AREA)


def pil_to_bgr(img: Any, reduce: int) -> np.ndarray:
    """Any PIL image as BGR uint8, converted (and reduced) in row strips into one preallocated result."""
    img.load()
    w, h = img.size
    mode = img.mode
    scale = 1.0
    if mode == "F":
        _, hi = img.getextrema()
        hi = float(hi) if hi is not None else 1.0
        scale = 255.0 if hi <= 1.0 else (255.0 / 65535.0 if hi > 255.0 else 1.0)
    out = np.empty((-(-h // reduce), -(-w // reduce), 3), np.uint8)
    step = strip_rows(w, reduce)
    for y0 in range(0, h, step):
        strip = img.crop((0, y0, w, min(h, y0 + step)))
        bgr = _strip_to_bgr(strip, mode, scale)
        del strip
        if reduce > 1:
            bgr = _box_reduce(bgr, reduce)
        out[y0 // reduce : y0 // reduce + bgr.shape[0]] = bgr
    return out


def _strip_to_bgr(strip: Any, mode: str, scale: float) -> np.ndarray:
    import cv2

    if mode in _GREY_MODES:
        grey = np.asarray(strip if mode == "L" else strip.convert("L"))
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if mode in _WIDE_GREY_MODES:
        wide = np.asarray(strip)
        if wide.dtype != np.uint16:
            wide = np.clip(wide, 0, 65535).astype(np.uint16)
        return cv2.cvtColor((wide >> 8).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    if mode == "F":
        grey = np.clip(np.asarray(strip, dtype=np.float32) * scale + 0.5, 0, 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in strip.info):
        return _flatten_alpha(np.asarray(strip.convert("RGBA")), cv2.COLOR_RGBA2BGR)
    rgb = np.asarray(strip if mode == "RGB" else strip.convert("RGB"))  # CMYK, YCbCr, P, LAB, ...
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _flatten_alpha(arr: np.ndarray, code: int) -> np.ndarray:
    """Composite a 4-channel uint8 image over white, in integers and row blocks: BGR uint8.

    ``round(c * a / 255 + 255 * (1 - a / 255))`` computed as ``(c*a + 255*(255-a) + 127) // 255``
    in uint16 (at most 65 152), one block of about ``STRIP_PIXELS`` pixels at a time.
    """
    import cv2

    h, w = arr.shape[:2]
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, STRIP_PIXELS // max(w, 1))
    for y0 in range(0, h, step):
        block = np.ascontiguousarray(arr[y0 : y0 + step])
        colour = cv2.cvtColor(block, code).astype(np.uint16)
        alpha = block[:, :, 3:4].astype(np.uint16)
        colour *= alpha
        colour += (255 - alpha) * 255 + 127
        colour //= 255
        out[y0 : y0 + step] = colour
    return out


def array_to_bgr(arr: np.ndarray) -> np.ndarray:
    """Convert a numpy image (gray, 3 or 4 channels BGR(A), uint8/uint16/bool) to contiguous BGR uint8."""
    import cv2

    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise InvalidImageError(f"numpy images must be uint8 or uint16, got {arr.dtype}; convert to uint8 0..255")
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return cv2.cvtColor(arr[:, :, 0], cv2.COLOR_GRAY2BGR)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return _flatten_alpha(arr, cv2.COLOR_BGRA2BGR)
    raise InvalidImageError(f"unsupported image array shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")


def orient(bgr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to a decoded (H, W, C) array, as PIL's exif_transpose does."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(bgr)) if op else bgr


def return_free_memory() -> None:
    """``malloc_trim(0)`` where glibc has it: the big buffers a decode freed go back to the OS.

    Decodes run in worker threads, and glibc keeps what one thread frees in that thread's
    arena: without this, N threads that each decoded one large image hold N images' worth
    of memory, even when the decodes ran one at a time.
    """
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None
