"""Image decoding with limits.

Every image facematch touches comes through :func:`load_image`. It accepts a path,
raw bytes, a numpy array (BGR, the OpenCV convention) or a PIL image, and returns a
:class:`DecodedImage`: BGR uint8 pixels with EXIF orientation applied, plus the
scale factors back to the original image's coordinates.

Limits are enforced before the expensive part: the pixel budget is checked from the
header, before the full decode (decompression-bomb guard), and multi-frame images
are refused. Large JPEGs can be decoded at a reduced DCT scale when the caller only
needs ``max_side`` pixels (detection never needs full resolution of a 24-megapixel photo).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageTooLargeError, ImageTooSmallError, InvalidImageError, UnsupportedMediaError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MIN_SIDE = 16
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "MPO"})

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Any  # Any: PIL.Image.Image


@dataclass(frozen=True)
class DecodedImage:
    """BGR uint8 pixels (H, W, 3), orientation fixed, and the way back to original coordinates.

    ``scale`` is ``(sx, sy)``: multiply a coordinate in ``pixels`` by it to get the
    coordinate in the original (orientation-corrected) image.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]  # (width, height) after EXIF orientation
    scale: tuple[float, float] = (1.0, 1.0)
    source_format: str | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 2) points from decoded pixels to original coordinates."""
        if self.scale == (1.0, 1.0):
            return np.asarray(points, dtype=np.float32)
        return (np.asarray(points, dtype=np.float32) * np.array(self.scale, np.float32)).astype(np.float32)


def _check_budget(width: int, height: int, max_pixels: int | None, min_side: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image has an invalid size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, above the budget of {max_pixels}",
            width=width,
            height=height,
            max_pixels=max_pixels,
        )
    if min(width, height) < min_side:
        raise ImageTooSmallError(f"image is {width}x{height}; the smaller side must be at least {min_side} pixels")


def _array_to_bgr(arr: np.ndarray, channel_order: str) -> np.ndarray:
    """Convert a numpy image (gray, 3 or 4 channels, uint8 or uint16) to contiguous BGR uint8."""
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
        out = arr if channel_order == "BGR" else arr[:, :, ::-1]
        return np.ascontiguousarray(out)
    if arr.ndim == 3 and arr.shape[2] == 4:
        code = cv2.COLOR_BGRA2BGR if channel_order == "BGR" else cv2.COLOR_RGBA2BGR
        return _flatten_alpha(arr, code)
    raise InvalidImageError(f"unsupported image array shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")


def _flatten_alpha(arr: np.ndarray, code: int) -> np.ndarray:
    """Composite a 4-channel uint8 image over a white background, return BGR."""
    import cv2

    alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
    color = cv2.cvtColor(arr, code).astype(np.float32)
    out = color * alpha + 255.0 * (1.0 - alpha)
    return np.ascontiguousarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _pil_to_bgr(img: Any) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype != np.uint16:
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
        return _array_to_bgr(arr, "RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 1.0
        scale = 255.0 if hi <= 1.0 else (255.0 / 65535.0 if hi > 255.0 else 1.0)
        return _array_to_bgr(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        return _array_to_bgr(np.asarray(img.convert("RGBA")), "RGB")
    if mode == "L":
        return _array_to_bgr(np.asarray(img), "RGB")
    if mode != "RGB":
        img = img.convert("RGB")  # CMYK, YCbCr, P, 1, LAB, ...
    return _array_to_bgr(np.asarray(img), "RGB")


def _open_pil(data: bytes | Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image declares too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("not a recognised image (unreadable or unsupported format)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(f"cannot read image: {exc}") from exc


_CV2_MODES = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "L")}


def _looks_complete(fmt: str, data: bytes) -> bool:
    """Cheap end-of-stream check: OpenCV pads truncated JPEGs with grey instead of failing."""
    if fmt == "JPEG":
        return b"\xff\xd9" in data[-4096:]
    if fmt == "PNG":
        return b"IEND" in data[-64:]
    return False


def _orient(bgr: np.ndarray, orientation: int) -> np.ndarray:
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


def _decode_cv2(data: bytes, fmt: str, orientation: int, reduce: int) -> np.ndarray | None:
    """Fast decode with OpenCV (libjpeg-turbo / libpng), optionally at 1/2, 1/4 or 1/8 scale."""
    import cv2

    flag = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    if reduce > 1 and fmt == "JPEG":
        flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[
            reduce
        ] | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if bgr is None or bgr.ndim != 3:
        return None
    return _orient(bgr, orientation) if orientation != 1 else bgr


def _decode_pil(
    img: Any, *, max_pixels: int | None, min_side: int, max_side: int | None, data: bytes | None = None
) -> DecodedImage:
    from PIL import Image, ImageOps

    fmt = img.format
    if fmt is not None and fmt not in ACCEPTED_FORMATS:
        raise UnsupportedMediaError(f"image format {fmt} is not accepted; use JPEG, PNG, WebP, BMP or TIFF")
    n_frames = int(getattr(img, "n_frames", 1) or 1)
    if n_frames > 1 and fmt != "MPO":
        raise UnsupportedMediaError(f"animated or multi-frame images are not accepted ({fmt}, {n_frames} frames)")
    w, h = img.size
    orientation = 1
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        orientation = 1
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    _check_budget(ow, oh, max_pixels, min_side)
    if data is not None and fmt in _CV2_MODES and img.mode in _CV2_MODES[fmt] and _looks_complete(fmt, data):
        reduce = 1
        if max_side is not None and fmt == "JPEG":
            while reduce < 8 and max(w, h) // (reduce * 2) >= max_side:
                reduce *= 2
        fast = _decode_cv2(data, fmt, orientation, reduce)
        if fast is not None:
            dh, dw = fast.shape[:2]
            return DecodedImage(pixels=fast, original_size=(ow, oh), scale=(ow / dw, oh / dh), source_format=fmt)
    if max_side is not None and fmt in ("JPEG", "MPO") and max(w, h) > 2 * max_side:
        # DCT-domain downscale (1/2, 1/4, 1/8) that keeps at least max_side pixels
        img.draft("RGB", (max(1, w * max_side // max(w, h)), max(1, h * max_side // max(w, h))))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            bgr = _pil_to_bgr(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image declares too many pixels: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(f"cannot decode image (truncated or corrupt): {exc}") from exc
    dh, dw = bgr.shape[:2]
    scale = (ow / dw, oh / dh)
    return DecodedImage(pixels=bgr, original_size=(ow, oh), scale=scale, source_format=fmt)


def load_image(
    image: ImageInput | DecodedImage,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_side: int | None = None,
    max_bytes: int | None = None,
) -> DecodedImage:
    """Decode any accepted image input into BGR uint8 pixels.

    Args:
        image: a file path, encoded bytes, a numpy array (BGR or BGRA, the OpenCV
            convention; grayscale 2-D accepted; uint8 or uint16), or a PIL image.
        max_pixels: refuse images with more pixels than this, checked from the header
            before the full decode. ``None`` disables the check.
        min_side: refuse images whose smaller side is below this.
        max_side: when set, large JPEGs may be decoded at a reduced scale that keeps
            at least this many pixels on the long side (see ``DecodedImage.scale``).
        max_bytes: refuse encoded inputs larger than this.

    Raises:
        InvalidImageError: not an image, truncated, or an unusable array.
        UnsupportedMediaError: an image format or kind facematch does not accept.
        ImageTooLargeError: above ``max_pixels`` or ``max_bytes``.
        ImageTooSmallError: below ``min_side``.
    """
    if isinstance(image, DecodedImage):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise InvalidImageError(f"unsupported image array shape {image.shape}")
        h, w = image.shape[:2]
        _check_budget(w, h, max_pixels, min_side)
        bgr = _array_to_bgr(image, "BGR")
        return DecodedImage(pixels=bgr, original_size=(w, h))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise InvalidImageError("empty image data (0 bytes)")
        if max_bytes is not None and len(data) > max_bytes:
            raise ImageTooLargeError(f"encoded image is {len(data)} bytes, above the limit of {max_bytes}")
        return _decode_pil(_open_pil(data), max_pixels=max_pixels, min_side=min_side, max_side=max_side, data=data)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InvalidImageError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from exc
        if not path.is_file():
            raise InvalidImageError(f"not a file: {str(path)!r}")
        if size == 0:
            raise InvalidImageError(f"empty image file: {str(path)!r}")
        if max_bytes is not None and size > max_bytes:
            raise ImageTooLargeError(f"image file is {size} bytes, above the limit of {max_bytes}")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from exc
        img = _open_pil(raw)
        try:
            return _decode_pil(img, max_pixels=max_pixels, min_side=min_side, max_side=max_side, data=raw)
        finally:
            img.close()
    if _is_pil_image(image):
        return _decode_pil(image, max_pixels=max_pixels, min_side=min_side, max_side=max_side)
    raise InvalidImageError(
        f"unsupported image input of type {type(image).__name__}; pass a path, bytes, a BGR numpy array or a PIL image"
    )


def _is_pil_image(obj: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Image.Image)


__all__ = ["DEFAULT_MAX_PIXELS", "DecodedImage", "ImageInput", "load_image"]
