"""Bad input over HTTP: every case gets its documented 4xx as problem+json, never a 5xx or a trace.

Valid-but-unusual images (CMYK JPEG, 16-bit PNG, RGBA PNG) are accepted: the answer is 200
when they hold a face (checked against the plain JPEG), 422 ``no_face`` when they do not.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from _bombs import one_bit_png, rgba16_png, truncated_with_eoi
from _server_util import Server, auth
from PIL import Image

MAX_FILE = 1024 * 1024
MAX_REQUEST = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("badinput")
    with Server(
        tmp,
        gallery=tmp / "g.fmg",
        max_file_bytes=MAX_FILE,
        max_request_bytes=MAX_REQUEST,
        max_images_per_request=3,
        max_k=10,
        max_decode_bytes=128 * 1024 * 1024,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client(headers=auth("admin")) as c:
        yield c


@pytest.fixture(scope="module")
def face(wild_dir: Path) -> bytes:
    """A real face photo, small enough that its 16-bit and RGBA PNG versions fit the file limit."""
    img = Image.open(wild_dir / "obama.jpg").convert("RGB")
    return encode(img.resize((img.width // 2, img.height // 2)), "JPEG", quality=92)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring width x height pixels, with almost no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def gradient() -> bytes:
    x = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
    return encode(Image.fromarray(np.dstack([x, x.T, x // 2])), "PNG")


def check_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["code"] == code, body
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body


def verify_files(a: bytes, b: bytes, ctype: str = "application/octet-stream") -> dict[str, Any]:
    return {"image1": ("a", a, ctype), "image2": ("b", b, ctype)}


# ---- undecodable, oversized and unsupported images ---------------------------------------------------
@pytest.mark.parametrize(
    ("name", "make", "status", "code"),
    [
        ("empty", lambda f: b"", 422, "invalid_image"),
        ("plain_text", lambda f: b"hello, this is not an image\n" * 10, 422, "invalid_image"),
        ("truncated_jpeg", lambda f: f[: len(f) // 3], 422, "invalid_image"),
        ("truncated_jpeg_with_eoi", lambda f: truncated_with_eoi(f), 422, "invalid_image"),
        ("png_16bit_rgba_5000x5000", lambda f: rgba16_png(), 413, "image_too_large"),  # 194 KB, ~133 MB to decode
        ("png_1bit_5000x4999", lambda f: one_bit_png(), 422, "no_face"),  # 3 KB, decoded within its budget
        ("png_50000x50000", lambda f: huge_png(), 413, "image_too_large"),
        ("one_pixel", lambda f: encode(Image.new("RGB", (1, 1), "white"), "PNG"), 422, "image_too_small"),
        ("animated_gif", lambda f: animated_gif(), 415, "unsupported_media"),
        ("no_face", lambda f: gradient(), 422, "no_face"),
        ("above_max_file_bytes", lambda f: b"\xff\xd8" + bytes(MAX_FILE), 413, "payload_too_large"),
    ],
)
def test_bad_images_multipart(client: httpx.Client, face: bytes, name: str, make: Any, status: int, code: str) -> None:
    body = check_problem(client.post("/verify", files=verify_files(face, make(face))), status, code)
    if code not in ("payload_too_large",):
        assert body["details"]["image"] == "image2"
    # the same bytes as base64 JSON get the same answer (and so does /identify and /detect)
    if name != "above_max_file_bytes":
        data = base64.b64encode(make(face)).decode()
        json_code = "invalid_request" if name == "empty" else code  # the JSON schema asks for a non-empty string
        check_problem(client.post("/v1/verify", json={"image1": data, "image2": data}), status, json_code)
        if code != "no_face":
            check_problem(client.post("/detect", files={"image": ("x", make(face))}), status, code)
        check_problem(client.post("/identify", files={"image": ("x", make(face))}), status, code)


@pytest.mark.parametrize("variant", ["cmyk_jpeg", "png_16bit", "rgba_png"])
def test_unusual_but_valid_images_are_accepted(client: httpx.Client, face: bytes, variant: str) -> None:
    img = Image.open(io.BytesIO(face))
    if variant == "cmyk_jpeg":
        data = encode(img.convert("CMYK"), "JPEG", quality=95)
        assert Image.open(io.BytesIO(data)).mode == "CMYK"
    elif variant == "png_16bit":
        bgr = cv2.imdecode(np.frombuffer(face, np.uint8), cv2.IMREAD_COLOR)
        ok, buf = cv2.imencode(".png", bgr.astype(np.uint16) * 257)
        assert ok
        data = buf.tobytes()
    else:
        rgba = img.convert("RGBA")
        rgba.putalpha(255)
        data = encode(rgba, "PNG")
        assert Image.open(io.BytesIO(data)).mode == "RGBA"
    r = client.post("/verify", files=verify_files(face, data))
    assert r.status_code == 200, r.text
    assert r.json()["is_match"] is True and r.json()["similarity"] > 0.9


def test_rgba_photo_from_the_wild_set(client: httpx.Client, face: bytes, wild_dir: Path) -> None:
    rgba = (wild_dir / "rgba_32bit.png").read_bytes()
    r = client.post("/detect", files={"image": ("rgba_32bit.png", rgba)})
    assert r.status_code == 200, r.text
    assert r.json()["faces_total"] >= 1  # the 32-bit RGBA photo goes through the same decode path as RGB
    obama = (wild_dir / "obama.jpg").read_bytes()
    v = client.post("/verify", files=verify_files(obama, rgba))
    assert v.status_code == 200, v.text
    assert v.json()["is_match"] is True  # the same person (test_matcher_real checks this pair in the SDK)


# ---- malformed requests ----------------------------------------------------------------------------
def test_multipart_missing_a_part(client: httpx.Client, face: bytes) -> None:
    body = check_problem(client.post("/verify", files={"image1": ("a.jpg", face)}), 422, "invalid_request")
    assert "image2" in body["detail"]
    check_problem(client.post("/identify", data={"k": "3"}, files={"other": ("a", face)}), 422, "invalid_request")


def test_wrong_types(client: httpx.Client, face: bytes) -> None:
    b64 = base64.b64encode(face).decode()
    check_problem(client.post("/verify", json={"image1": 123, "image2": b64}), 422, "invalid_request")
    check_problem(client.post("/verify", json={"image1": b64, "image2": b64, "threshold": 5}), 422, "invalid_request")
    check_problem(client.post("/verify", json={"image1": b64, "image2": b64, "far": "x"}), 422, "invalid_request")
    check_problem(client.post("/verify", json={"image1": b64, "image2": b64, "extra": 1}), 422, "invalid_request")
    check_problem(client.post("/verify", json=[b64, b64]), 422, "invalid_request")
    for loose in ({"threshold": True}, {"fmr": "1e-4"}, {"far": "0.001"}):  # strict JSON types
        check_problem(client.post("/verify", json={"image1": b64, "image2": b64, **loose}), 422, "invalid_request")
    check_problem(client.post("/identify", json={"image": b64, "k": True}), 422, "invalid_request")
    check_problem(
        client.post("/verify", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
    )
    check_problem(client.post("/verify", json={"image1": "!!!not base64!!!", "image2": b64}), 422, "invalid_request")
    check_problem(client.post("/identify", files={"image": ("a", face)}, data={"k": "abc"}), 422, "invalid_request")
    # k above the server's max_k (10 here) is a schema violation: the OpenAPI schema states the maximum
    body = check_problem(
        client.post("/identify", files={"image": ("a", face)}, data={"k": "500"}), 422, "invalid_request"
    )
    assert body["errors"][0]["loc"][-1] == "k" and "max_k" in body["errors"][0]["msg"]
    check_problem(client.post("/identify", json={"image": "AAAA", "k": 11}), 422, "invalid_request")
    check_problem(
        client.post("/identify", files={"image": ("a", face)}, data={"faces": "some"}), 422, "invalid_request"
    )
    check_problem(
        client.post("/verify", files={"image1": ("a", face)}, data={"image2": "text"}), 422, "invalid_request"
    )
    check_problem(client.get("/gallery/identities", params={"limit": "many"}), 422, "invalid_request")
    check_problem(client.get("/gallery/identities", params={"cursor": "%%%"}), 422, "invalid_argument")
    check_problem(client.delete("/gallery/identities/x/templates/abc"), 422, "invalid_request")
    check_problem(client.delete(f"/gallery/identities/x/templates/{2**70}"), 422, "invalid_request")


def test_url_inputs_are_disabled(client: httpx.Client, face: bytes) -> None:
    b64 = base64.b64encode(face).decode()
    body = {"image1": "https://example.com/face.jpg", "image2": b64}
    check_problem(client.post("/verify", json=body), 422, "url_input_disabled")


def test_unsupported_content_type(client: httpx.Client, face: bytes) -> None:
    check_problem(
        client.post("/verify", content=face, headers={"content-type": "image/jpeg"}), 415, "unsupported_media_type"
    )
    check_problem(
        client.post("/verify", content=b"a=b", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"
    )


def test_oversized_requests(client: httpx.Client, face: bytes) -> None:
    big = json.dumps({"image1": "A" * (MAX_REQUEST + 10), "image2": "A"}).encode()
    check_problem(
        client.post("/verify", content=big, headers={"content-type": "application/json"}), 413, "payload_too_large"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        yield b'{"image1": "'
        for _ in range(MAX_REQUEST // 65536 + 2):
            yield b"A" * 65536
        yield b'", "image2": "A"}'

    check_problem(
        client.post("/verify", content=chunks(), headers={"content-type": "application/json"}), 413, "payload_too_large"
    )
    huge_field = {"identity_id": "x", "metadata": '{"note": "' + "n" * (1024 * 1024 + 10) + '"}'}
    r = client.post("/gallery/identities", data=huge_field, files={"images": ("a.jpg", face)})
    check_problem(r, 413, "payload_too_large")  # a text field over the 1 MiB part cap
    many = [("images", (f"{i}.jpg", face)) for i in range(4)]  # max_images_per_request=3
    check_problem(client.post("/gallery/identities", data={"identity_id": "x"}, files=many), 413, "too_many_images")
    b64 = base64.b64encode(face).decode()
    check_problem(
        client.post("/gallery/identities", json={"identity_id": "x", "images": [b64] * 4}), 413, "too_many_images"
    )


def test_gallery_bad_input(client: httpx.Client, face: bytes) -> None:
    r = client.post("/gallery/identities", data={"identity_id": "nobody"}, files={"images": ("g.png", gradient())})
    body = check_problem(r, 422, "no_face")
    report = body["details"]["report"]
    assert report["outcomes"][0]["status"] == "no_face"
    assert report["outcomes"][0]["source"] == "g.png" and report["created"] is False  # names the upload
    assert client.get("/gallery/identities/nobody").status_code == 404  # nothing written
    check_problem(
        client.post(
            "/gallery/identities", data={"identity_id": "x", "metadata": "[1, 2"}, files={"images": ("a", face)}
        ),
        422,
        "invalid_request",
    )
    # the gallery's one identity-id rule, applied by the request schema: a 422 naming the field
    for bad_id in ("x\u0001y", "team/alice", "..", ".", "a\u200bb", "\u202eevil", "a\u0085b", "a\u2028b", "\ufeffx"):
        for form in (
            {"data": {"identity_id": bad_id}, "files": {"images": ("a.jpg", face)}},
            {"json": {"identity_id": bad_id, "images": [base64.b64encode(face).decode()]}},
        ):
            r = client.post("/gallery/identities", **form)  # type: ignore[arg-type]
            body = check_problem(r, 422, "invalid_request")
            assert body["errors"][0]["loc"][-1] == "identity_id", (bad_id, body)
    for slashed in (
        {"data": {"identity_id": "team/alice"}, "files": {"images": ("a.jpg", face)}},
        {"json": {"identity_id": "team/alice", "images": [base64.b64encode(face).decode()]}},
    ):
        r = client.post("/gallery/identities", **slashed)  # type: ignore[arg-type]
        body = check_problem(r, 422, "invalid_request")  # it could never be addressed as /identities/{id}
        assert body["errors"][0]["loc"][-1] == "identity_id"
    assert "team/alice" not in client.get("/gallery/identities").text
    check_problem(
        client.post("/gallery/identities/nobody/faces", files={"images": ("a", face)}), 404, "identity_not_found"
    )
    check_problem(client.delete("/gallery/identities/nobody"), 404, "identity_not_found")


def test_openapi_states_the_servers_k_limit(client: httpx.Client) -> None:
    body = client.get("/openapi.json").json()["paths"]["/identify"]["post"]["requestBody"]["content"]
    for media in ("multipart/form-data", "application/json"):
        assert body[media]["schema"]["properties"]["k"]["maximum"] == 10  # this server's max_k


def test_no_5xx_and_server_alive(server: Server, client: httpx.Client) -> None:
    lines = client.get("/metrics").text.splitlines()
    errors = [x for x in lines if 'status="5' in x and 'route="/readyz"' not in x]  # readyz: 503 while loading
    assert not errors, errors
    assert client.get("/healthz").status_code == 200
