"""Image decoding with limits on pixels *and* bytes.

Every image facematch touches comes through :func:`load_image`. It accepts a path,
raw bytes, a numpy array (BGR, the OpenCV convention) or a PIL image, and returns a
:class:`DecodedImage`: BGR uint8 pixels with EXIF orientation applied, plus the
scale factors back to the original image's coordinates.

Decoding is two steps, :func:`probe_image` and :meth:`DecodePlan.decode`, so that a
caller (the server) can reserve memory between them:

* **probe** reads the header only: format, size, mode, EXIF orientation, the reduction
  the caller allows (``max_side``), and ``cost_bytes``, an upper bound of the memory the
  decode will hold at its peak. The pixel budget (``max_pixels``), the byte budget
  (``max_decode_bytes``) and the multi-frame rule are checked here, before any pixel
  is decoded (decompression-bomb guard);
* **decode** then never holds more than the plan says: JPEGs are decoded by
  libjpeg-turbo (``simplejpeg``) in strict mode, at a reduced DCT scale when ``max_side``
  allows, and a corrupt or truncated scan is an error, not a grey fill; RGB and grey PNGs
  by OpenCV (then reduced); everything else (alpha, palettes,
  1-bit, 16-bit, WebP, TIFF, ...) by PIL, converted to 8-bit BGR in row strips (alpha
  composited on white in integers) and reduced to ``max_side`` strip by strip, so no
  full-size intermediate copy is ever made.

The pixel paths live in ``facematch._pixels``. What each costs is documented in docs/server.md
("Limits and memory"); tests/test_io_memory.py measures the peaks against ``cost_bytes``.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._pixels import (
    array_to_bgr,
    decode_jpeg,
    decode_png,
    orient,
    pil_to_bgr,
    return_free_memory,
    strip_rows,
)
from .errors import ImageTooLargeError, ImageTooSmallError, InvalidImageError, UnsupportedMediaError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MIN_SIDE = 16
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "MPO"})
MAX_REDUCTION = 8  # the coarsest DCT scale of libjpeg (1/8); the other formats use the same rule

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Any  # Any: PIL.Image.Image
DecodePath = Literal["jpeg", "png", "pil"]

# Bytes per pixel of PIL's own storage of a decoded image, by mode (PIL keeps RGB in 4 bytes).
_PIL_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_PIL_DEFAULT_BPP = 4  # RGB, RGBA, LA, PA, CMYK, YCbCr, LAB, HSV, I, F, ...
# Formats whose PIL decoder holds full-size buffers of its own besides PIL's image (measured:
# libwebp's output and its copy, libtiff's RGBA read).
_DECODER_BUFFER_BPP = {"WEBP": 10, "TIFF": 4}
_PNG_BYTES_PER_PIXEL = 6  # OpenCV's PNG decode: the BGR result and one full-size copy (measured, OpenCV 5)
_STRIP_BYTES_PER_PIXEL = 24  # crop + convert + numpy + uint16 compositing + reduction, per strip pixel
DECODE_OVERHEAD_BYTES = 8 * 1024 * 1024  # decoder state, row buffers, allocator slack: added to every plan
_TRIM_ABOVE = 32 * 1024 * 1024  # after a decode planned above this, free memory goes back to the OS


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


@dataclass(frozen=True)
class DecodePlan:
    """What decoding an image will do and cost, read from its header (see :func:`probe_image`).

    ``cost_bytes`` bounds the memory the decode holds at its peak (the encoded input not
    included); ``decoded_size`` is the (width, height) of the pixels it returns, before
    EXIF orientation; ``reduce`` the integer factor it decodes at (1 = full size).
    """

    source_format: str | None
    mode: str
    size: tuple[int, int]  # (width, height) as stored
    original_size: tuple[int, int]  # (width, height) after EXIF orientation
    orientation: int
    reduce: int
    path: DecodePath
    cost_bytes: int
    _image: Any = field(default=None, repr=False, compare=False)  # the opened PIL image (header read)
    _data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def decoded_size(self) -> tuple[int, int]:
        w, h = self.size
        return -(-w // self.reduce), -(-h // self.reduce)

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the BGR pixels the decode returns."""
        w, h = self.decoded_size
        return 3 * w * h

    def decode(self) -> DecodedImage:
        """Decode the pixels (BGR uint8, orientation applied). Raises ``InvalidImageError`` on corrupt data.

        A plan of encoded bytes or a path decodes once: its PIL image (and the memory of its
        pixels) is closed afterwards. A PIL image given by the caller is left open.
        """
        try:
            return self._decode()
        finally:
            if self._data is not None:
                self._image.close()
            if self.cost_bytes > _TRIM_ABOVE:
                return_free_memory()

    def _decode(self) -> DecodedImage:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if self.path == "jpeg":
                    assert self._data is not None
                    bgr = decode_jpeg(self._data, self._image, self.reduce)
                elif self.path == "png":
                    assert self._data is not None
                    fast = decode_png(self._data, self.reduce)
                    # OpenCV refused it: let PIL say why
                    bgr = fast if fast is not None else pil_to_bgr(self._image, self.reduce)
                else:
                    bgr = pil_to_bgr(self._image, self.reduce)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"image declares too many pixels: {exc}") from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InvalidImageError(f"cannot decode image (truncated or corrupt): {exc}") from exc
        if self.orientation != 1:
            bgr = orient(bgr, self.orientation)
        dh, dw = bgr.shape[:2]
        ow, oh = self.original_size
        scale = (ow / dw, oh / dh)
        return DecodedImage(pixels=bgr, original_size=(ow, oh), scale=scale, source_format=self.source_format)


# ---- budgets --------------------------------------------------------------------------------
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


def _reduction(width: int, height: int, max_side: int | None) -> int:
    """The largest factor in 1, 2, 4, 8 that keeps at least ``max_side`` pixels on the long side."""
    reduce = 1
    if max_side is not None:
        while reduce < MAX_REDUCTION and max(width, height) // (reduce * 2) >= max_side:
            reduce *= 2
    return reduce


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_coefficient_bytes(img: Any) -> int:
    """libjpeg's whole-image DCT coefficient buffer (progressive or multi-scan JPEGs): 2 bytes per sample."""
    w, h = img.size
    layers = getattr(img, "layer", None) or [(0, 1, 1, 0)] * len(img.getbands())
    hmax = max(int(c[1]) for c in layers) or 1
    vmax = max(int(c[2]) for c in layers) or 1
    total = 0
    for _, hs, vs, _q in layers:
        cw = _ceil_div(_ceil_div(w * int(hs), hmax), 8) * 8
        ch = _ceil_div(_ceil_div(h * int(vs), vmax), 8) * 8
        total += 2 * cw * ch
    return total


def _plan_cost(img: Any, path: DecodePath, reduce: int, orientation: int, data: bytes | None) -> int:
    return DECODE_OVERHEAD_BYTES + _pixel_cost(img, path, reduce, orientation, data)


def _pixel_cost(img: Any, path: DecodePath, reduce: int, orientation: int, data: bytes | None) -> int:
    w, h = img.size
    pixels = w * h
    out = 3 * (-(-w // reduce)) * (-(-h // reduce))
    oriented = out if orientation in (2, 3, 4, 5, 6, 7, 8) else 0  # orient makes one copy
    if path == "jpeg":
        cost = out + oriented
        if img.mode == "CMYK":  # CMYK samples, then the strip conversion of them
            cost += 4 * (out // 3) + _STRIP_BYTES_PER_PIXEL * min(out // 3, strip_rows(w, 1) * w)
        multi_scan = bool(img.info.get("progressive") or img.info.get("progression"))
        if multi_scan or (data is not None and data.count(b"\xff\xda") > 1):
            cost += _jpeg_coefficient_bytes(img)
        return cost
    if path == "png":
        return _PNG_BYTES_PER_PIXEL * pixels + (out if reduce > 1 else 0) + oriented
    stored = _PIL_BYTES_PER_PIXEL.get(img.mode, _PIL_DEFAULT_BPP) * pixels
    decoder = _DECODER_BUFFER_BPP.get(str(img.format), 0) * pixels
    strip = _STRIP_BYTES_PER_PIXEL * min(pixels, strip_rows(w, reduce) * w)
    return stored + decoder + strip + out + oriented


# ---- probing --------------------------------------------------------------------------------
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


def _looks_complete_png(data: bytes) -> bool:
    """Cheap end-of-stream check before the OpenCV PNG path (PIL reports truncation precisely)."""
    return b"IEND" in data[-64:]


def _orientation(img: Any) -> int:
    """The EXIF orientation (1-8) from the header alone.

    PIL's ``PngImageFile.getexif`` decodes the whole image to look for an ``eXIf`` chunk after the
    pixel data: for PNG only the chunks before it are read (as in PIL's ``info``), never the pixels.
    """
    from PIL import Image

    try:
        exif = Image.Image.getexif(img) if img.format == "PNG" else img.getexif()
        orientation = int(exif.get(0x0112, 1) or 1)
    except Exception:
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _choose_path(img: Any, data: bytes | None) -> DecodePath:
    fmt = img.format
    if data is not None and fmt in ("JPEG", "MPO") and img.mode in ("RGB", "L", "CMYK"):
        return "jpeg"
    if data is not None and fmt == "PNG" and img.mode in ("RGB", "L") and _looks_complete_png(data):
        return "png"
    return "pil"


def _plan(
    img: Any,
    data: bytes | None,
    *,
    max_pixels: int | None,
    min_side: int,
    max_side: int | None,
    max_decode_bytes: int | None,
) -> DecodePlan:
    fmt = img.format
    if fmt is not None and fmt not in ACCEPTED_FORMATS:
        raise UnsupportedMediaError(f"image format {fmt} is not accepted; use JPEG, PNG, WebP, BMP or TIFF")
    n_frames = int(getattr(img, "n_frames", 1) or 1)
    if n_frames > 1 and fmt != "MPO":
        raise UnsupportedMediaError(f"animated or multi-frame images are not accepted ({fmt}, {n_frames} frames)")
    w, h = img.size
    orientation = _orientation(img)
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    _check_budget(ow, oh, max_pixels, min_side)
    path = _choose_path(img, data)
    reduce = _reduction(w, h, max_side)
    cost = _plan_cost(img, path, reduce, orientation, data)
    if max_decode_bytes is not None and cost > max_decode_bytes:
        raise ImageTooLargeError(
            f"decoding this {w}x{h} {img.mode} {fmt or 'image'} needs about {cost} bytes, "
            f"above the decode budget of {max_decode_bytes}",
            width=w,
            height=h,
            cost_bytes=cost,
            max_decode_bytes=max_decode_bytes,
        )
    return DecodePlan(
        source_format=fmt,
        mode=str(img.mode),
        size=(w, h),
        original_size=(ow, oh),
        orientation=orientation,
        reduce=reduce,
        path=path,
        cost_bytes=cost,
        _image=img,
        _data=data,
    )


def probe_image(
    image: ImageInput,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_side: int | None = None,
    max_bytes: int | None = None,
    max_decode_bytes: int | None = None,
) -> DecodePlan:
    """Read an encoded image's header and plan its decode: the limits are checked, nothing is decoded.

    ``image`` is a file path, encoded bytes or a PIL image (numpy arrays are already
    decoded: pass them to :func:`load_image`). Raises as :func:`load_image` does, and
    ``ImageTooLargeError`` when the decode would need more than ``max_decode_bytes``.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise InvalidImageError("empty image data (0 bytes)")
        if max_bytes is not None and len(data) > max_bytes:
            raise ImageTooLargeError(f"encoded image is {len(data)} bytes, above the limit of {max_bytes}")
        img = _open_pil(data)
    elif isinstance(image, (str, os.PathLike)):
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
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from exc
        img = _open_pil(data)
    elif _is_pil_image(image):
        data, img = None, image
    else:
        raise InvalidImageError(
            f"unsupported image input of type {type(image).__name__}; "
            "pass a path, bytes, a BGR numpy array or a PIL image"
        )
    return _plan(
        img, data, max_pixels=max_pixels, min_side=min_side, max_side=max_side, max_decode_bytes=max_decode_bytes
    )


def load_image(
    image: ImageInput | DecodedImage,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_side: int | None = None,
    max_bytes: int | None = None,
    max_decode_bytes: int | None = None,
) -> DecodedImage:
    """Decode any accepted image input into BGR uint8 pixels.

    Args:
        image: a file path, encoded bytes, a numpy array (BGR or BGRA, the OpenCV
            convention; grayscale 2-D accepted; uint8 or uint16), or a PIL image.
        max_pixels: refuse images with more pixels than this, checked from the header
            before the full decode. ``None`` disables the check.
        min_side: refuse images whose smaller side is below this.
        max_side: when set, large images are decoded at a reduced scale (1/2, 1/4 or 1/8;
            JPEGs in the DCT domain) that keeps at least this many pixels on the long
            side (see ``DecodedImage.scale``).
        max_bytes: refuse encoded inputs larger than this.
        max_decode_bytes: refuse images whose decode would hold more memory than this at
            its peak (:attr:`DecodePlan.cost_bytes`, estimated from the header).

    Raises:
        InvalidImageError: not an image, truncated or corrupt, or an unusable array.
        UnsupportedMediaError: an image format or kind facematch does not accept.
        ImageTooLargeError: above ``max_pixels``, ``max_bytes`` or ``max_decode_bytes``.
        ImageTooSmallError: below ``min_side``.
    """
    if isinstance(image, DecodedImage):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise InvalidImageError(f"unsupported image array shape {image.shape}")
        h, w = image.shape[:2]
        _check_budget(w, h, max_pixels, min_side)
        return DecodedImage(pixels=array_to_bgr(image), original_size=(w, h))
    plan = probe_image(
        image,
        max_pixels=max_pixels,
        min_side=min_side,
        max_side=max_side,
        max_bytes=max_bytes,
        max_decode_bytes=max_decode_bytes,
    )
    return plan.decode()


def _is_pil_image(obj: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Image.Image)


__all__ = [
    "DECODE_OVERHEAD_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DecodePlan",
    "DecodedImage",
    "ImageInput",
    "load_image",
    "probe_image",
]
