"""Decoding edge cases: every accepted kind of input, and every refusal typed."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facematch.errors import (
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidImageError,
    UnsupportedMediaError,
)
from facematch.io import load_image


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(w: int = 64, h: int = 48) -> np.ndarray:
    """RGB test pattern with distinct channels so colour-order mistakes show."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 200)], axis=-1).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size in its IHDR but carries almost no data (a decompression-bomb probe)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)  # a few rows; a real bomb would inflate to gigabytes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_bgr_array_passes_through_unchanged() -> None:
    bgr = _gradient()[:, :, ::-1].copy()
    out = load_image(bgr)
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == bgr.shape
    assert np.array_equal(out.pixels, bgr)
    assert out.scale == (1.0, 1.0)


def test_path_bytes_and_pil_agree_and_are_bgr(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rgb = _gradient()
    data = _encode(Image.fromarray(rgb), "PNG")
    p = tmp_path / "x.png"
    p.write_bytes(data)
    a, b, c = load_image(p), load_image(data), load_image(Image.fromarray(rgb))
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(b.pixels, c.pixels)
    assert np.array_equal(a.pixels, rgb[:, :, ::-1])  # decoded as BGR
    assert load_image(str(p)).pixels.shape == (48, 64, 3)


def test_exif_orientation_is_applied() -> None:
    rgb = _gradient(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    data = _encode(Image.fromarray(rgb), "JPEG", exif=exif, quality=95)
    out = load_image(data)
    assert out.pixels.shape[:2] == (80, 40)  # width and height swapped
    assert out.original_size == (40, 80)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(orientation: int) -> None:
    from PIL import ImageOps

    rgb = _gradient(60, 36)
    rgb[:10, :20] = (255, 0, 0)  # a marker in one corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(rgb), "JPEG", exif=exif, quality=98)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))[:, :, ::-1]
    got = load_image(data).pixels
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 2.0


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("1", "PNG")],
)
def test_colour_modes_decode_to_bgr_uint8(mode: str, fmt: str) -> None:
    img = Image.fromarray(_gradient()).convert("L" if mode in ("I;16", "1") else "RGB")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    elif mode != "L":
        img = img.convert(mode)
    out = load_image(_encode(img, fmt))
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == (48, 64, 3)


def test_sixteen_bit_gray_keeps_its_range() -> None:
    arr16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    out = load_image(_encode(Image.fromarray(arr16), "PNG"))
    assert out.pixels[..., 0].min() == 0 and out.pixels[..., 0].max() == 255


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent black
    out = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out.pixels == 255).all()


def test_numpy_variants() -> None:
    gray = np.full((20, 30), 7, np.uint8)
    assert load_image(gray).pixels.shape == (20, 30, 3)
    bgra = np.zeros((20, 30, 4), np.uint8)
    bgra[..., 3] = 255
    assert (load_image(bgra).pixels == 0).all()
    assert load_image(np.full((20, 30, 3), 65535, np.uint16)).pixels.max() == 255
    with pytest.raises(InvalidImageError):
        load_image(np.zeros((20, 30, 3), np.float32))
    with pytest.raises(InvalidImageError):
        load_image(np.zeros((20, 30, 5), np.uint8))


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, I am plain text\n", b"<html><body>not an image</body></html>", b"\x89PNG\r\n\x1a\n"],
)
def test_non_images_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        load_image(data)


def test_truncated_jpeg_is_invalid() -> None:
    data = _encode(Image.fromarray(_gradient(256, 256)), "JPEG", quality=90)
    with pytest.raises(InvalidImageError):
        load_image(data[: len(data) // 2])


def test_pixel_budget_checked_before_decode() -> None:
    bomb = png_header_only(50_000, 50_000)  # 2.5 gigapixels declared, ~30 bytes of data
    with pytest.raises(ImageTooLargeError):
        load_image(bomb)
    with pytest.raises(ImageTooLargeError):
        load_image(_encode(Image.fromarray(_gradient(100, 100)), "PNG"), max_pixels=5000)
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)


def test_max_bytes() -> None:
    data = _encode(Image.fromarray(_gradient()), "PNG")
    with pytest.raises(ImageTooLargeError):
        load_image(data, max_bytes=len(data) - 1)


def test_tiny_image_is_refused() -> None:
    with pytest.raises(ImageTooSmallError):
        load_image(_encode(Image.new("RGB", (1, 1)), "PNG"))


def test_animated_gif_is_unsupported_media() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedMediaError):
        load_image(buf.getvalue())
    # a single-frame GIF is fine
    assert load_image(_encode(Image.new("RGB", (32, 32), "red"), "GIF")).pixels.shape == (32, 32, 3)


def test_other_input_types_and_missing_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidImageError):
        load_image(12345)
    with pytest.raises(InvalidImageError):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(InvalidImageError):
        load_image(tmp_path)  # a directory
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InvalidImageError):
        load_image(tmp_path / "empty.jpg")


def test_large_jpeg_reduced_scale_decode_maps_back() -> None:
    big = Image.fromarray(np.tile(_gradient(400, 300), (10, 10, 1)))  # 4000x3000
    data = _encode(big, "JPEG", quality=80)
    full = load_image(data)
    reduced = load_image(data, max_side=1000)
    assert full.pixels.shape[:2] == (3000, 4000)
    assert reduced.pixels.shape[1] < 4000 and reduced.pixels.shape[1] >= 1000
    assert reduced.original_size == (4000, 3000)
    sx, sy = reduced.scale
    assert sx == pytest.approx(4000 / reduced.width) and sy == pytest.approx(3000 / reduced.height)
    assert np.allclose(reduced.to_original(np.array([[reduced.width, reduced.height]])), [[4000, 3000]])


# ---- bounded decode memory, strict JPEG (issue 12) ----------------------------------------------
def test_truncated_jpeg_with_an_end_marker_is_invalid() -> None:
    """The first 30 % of a photo plus FF D9: libjpeg fills the rest grey and only warns; strict mode refuses it."""
    from _bombs import truncated_with_eoi

    data = _encode(Image.fromarray(np.tile(_gradient(256, 256), (2, 2, 1))), "JPEG", quality=90)
    assert load_image(data).pixels.shape == (512, 512, 3)
    bad = truncated_with_eoi(data)
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        load_image(bad)
    with pytest.raises(InvalidImageError):
        load_image(bad, max_side=128)  # the reduced-scale decode is strict too
    progressive = _encode(Image.fromarray(np.tile(_gradient(256, 256), (2, 2, 1))), "JPEG", progressive=True)
    with pytest.raises(InvalidImageError):
        load_image(truncated_with_eoi(progressive, 0.5))


def test_jpeg_decodes_match_pil() -> None:
    """The strict libjpeg-turbo path gives PIL's pixels: baseline, progressive, grey, CMYK (Adobe inverted), EXIF."""
    rgb = np.tile(_gradient(128, 96), (2, 2, 1))
    for img, kw in (
        (Image.fromarray(rgb), {"quality": 95}),
        (Image.fromarray(rgb), {"quality": 95, "progressive": True}),
        (Image.fromarray(rgb).convert("L"), {"quality": 95}),
        (Image.fromarray(rgb).convert("CMYK"), {"quality": 95}),
    ):
        data = _encode(img, "JPEG", **kw)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[:, :, ::-1].astype(int)
        got = load_image(data).pixels.astype(int)
        assert got.shape == expected.shape
        assert np.abs(got - expected).mean() < 1.0, (img.mode, kw)


def test_alpha_compositing_in_integers_is_exact() -> None:
    """Every (colour, alpha) pair: the integer blend equals round(c*a/255 + 255*(1 - a/255)) in exact arithmetic."""
    c, a = np.meshgrid(np.arange(256), np.arange(256))
    bgra = np.stack([c, c, c, a], axis=-1).astype(np.uint8)  # (256, 256, 4): every combination
    got = load_image(bgra).pixels[..., 0].astype(np.int64)
    num = c * a + 255 * (255 - a)  # the blend times 255
    expected = (2 * num + 255) // 510  # round half up of num / 255
    assert np.array_equal(got, expected)


def test_reduced_decode_of_png_and_pil_formats_maps_back() -> None:
    """PNG (OpenCV path) and RGBA / 16-bit (PIL strip path) are reduced like JPEGs, with the scale to map back."""
    rgb = np.tile(_gradient(400, 300), (5, 5, 1))  # 2000x1500
    for img in (
        Image.fromarray(rgb),
        Image.fromarray(rgb).convert("RGBA"),
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        Image.fromarray(rgb).convert("P"),
    ):
        data = _encode(img, "PNG")
        full, reduced = load_image(data), load_image(data, max_side=480)
        assert full.pixels.shape[:2] == (1500, 2000)
        assert reduced.pixels.shape[:2] == (375, 500), img.mode  # 1/4: the long side stays >= 480
        assert reduced.original_size == (2000, 1500) and reduced.scale == (4.0, 4.0)
        box = full.pixels.reshape(375, 4, 500, 4, 3).mean(axis=(1, 3))  # the box average of the full decode
        assert np.abs(reduced.pixels.astype(float) - box).max() <= 1.0, img.mode


def test_decode_plan_bounds_bytes_before_decoding() -> None:
    """A 194 KB 16-bit RGBA 5000x5000 PNG passes the pixel budget; its byte cost is known from the header."""
    from _bombs import one_bit_png, rgba16_png

    from facematch.io import DECODE_OVERHEAD_BYTES, probe_image

    bomb = rgba16_png()
    assert len(bomb) < 256 * 1024
    plan = probe_image(bomb, max_pixels=25_000_000, max_side=1280)
    final = 3 * 5000 * 5000  # the full-size 8-bit BGR image
    assert plan.path == "pil" and plan.reduce == 2 and plan.decoded_size == (2500, 2500)
    assert plan.cost_bytes <= 3 * final + DECODE_OVERHEAD_BYTES  # the target: about 3x the 8-bit image
    with pytest.raises(ImageTooLargeError, match="decode budget") as err:
        load_image(bomb, max_pixels=25_000_000, max_side=1280, max_decode_bytes=plan.cost_bytes - 1)
    assert err.value.details["cost_bytes"] == plan.cost_bytes
    one = probe_image(one_bit_png(), max_pixels=25_000_000, max_side=1280)
    assert one.mode == "1" and one.cost_bytes < plan.cost_bytes
