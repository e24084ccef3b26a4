"""Small files that decode to large images (decompression bombs by bytes), made without holding the pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def zero_png(width: int, height: int, *, bit_depth: int, colour_type: int) -> bytes:
    """An all-zero PNG (IHDR bit depth and colour type as given), compressed row by row.

    ``bit_depth=16, colour_type=6`` is 16-bit RGBA (8 bytes a pixel); ``bit_depth=1,
    colour_type=0`` is 1-bit grey. A 5000x5000 16-bit RGBA one is about 200 KB.
    """
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row = b"\x00" + bytes((width * channels * bit_depth + 7) // 8)  # filter byte 0, then the samples
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def rgba16_png(width: int = 5000, height: int = 5000) -> bytes:
    return zero_png(width, height, bit_depth=16, colour_type=6)


def one_bit_png(width: int = 5000, height: int = 4999) -> bytes:
    return zero_png(width, height, bit_depth=1, colour_type=0)


def progressive_jpeg(width: int = 5000, height: int = 5000) -> bytes:
    """A flat progressive 4:4:4 JPEG (libjpeg then holds every DCT coefficient: 6 bytes a pixel)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(
        buf, "JPEG", progressive=True, subsampling=0, quality=50
    )
    return buf.getvalue()


def flat_image(fmt: str, mode: str = "RGB", width: int = 4000, height: int = 4000) -> bytes:
    """A flat (all-zero) image of ``mode`` in ``fmt``: small files for the formats' own decoders."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).convert(mode).save(buf, fmt)
    return buf.getvalue()


def rgb_png() -> bytes:
    return flat_image("PNG")


def rgba_webp() -> bytes:
    return flat_image("WEBP", "RGBA")


def palette_gif() -> bytes:
    return flat_image("GIF", "P")


def truncated_with_eoi(jpeg: bytes, keep: float = 0.3) -> bytes:
    """The first ``keep`` of a JPEG with an end-of-image marker appended (decoders fill the rest grey)."""
    return jpeg[: int(len(jpeg) * keep)] + b"\xff\xd9"
