"""POST /explain on a real server (uvicorn on 127.0.0.1): maps, regions, scope, limits, errors, OpenAPI."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from _server_util import KEYS, Server

EXPLAIN_KEY = "explain-key-0123456789"
API_KEYS = json.dumps(
    [
        {"name": "ops", "key": KEYS["admin"], "scopes": ["admin"]},
        {"name": "kiosk", "key": KEYS["match"], "scopes": ["match"]},
        {"name": "auditor", "key": EXPLAIN_KEY, "scopes": ["explain"]},
    ]
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("explain-server")
    with Server(
        tmp, api_keys=API_KEYS, explain_max_png_side=200, max_file_bytes=2_000_000, cache_dir=str(tmp / "cache")
    ) as srv:
        yield srv


def _files(wild: Path, a: str, b: str) -> dict[str, tuple[str, bytes, str]]:
    return {"image1": (a, (wild / a).read_bytes(), "image/jpeg"), "image2": (b, (wild / b).read_bytes(), "image/jpeg")}


def _png(b64: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img


def test_explain_a_pair(server: Server, wild_dir: Path) -> None:
    with server.client() as c:
        r = c.post("/explain", files=_files(wild_dir, "obama.jpg", "obama2.jpg"), headers={"X-API-Key": EXPLAIN_KEY})
        assert r.status_code == 200, r.text
        body = r.json()
        v = c.post(
            "/verify", files=_files(wild_dir, "obama.jpg", "obama2.jpg"), headers={"X-API-Key": KEYS["match"]}
        ).json()
    assert body["method"] == "decomposition" and body["fallback_reason"] is None
    assert body["similarity"] == pytest.approx(v["similarity"], abs=1e-6) and body["is_match"] == v["is_match"]
    assert body["threshold"] == v["threshold"] and body["model_id"] == "w600k_mbf"
    assert body["residual"] <= 1e-4 and body["colour_scale"] > 0
    for key in ("face1", "face2"):
        side = body[key]
        assert side["face"]["box"] == v[key]["box"]
        cells = np.array(side["cells"])
        assert cells.shape == (7, 7)
        assert cells.sum() + side["bias"] == pytest.approx(body["similarity"], abs=1e-4)
        assert [g["region"] for g in side["regions"]] == ["eyes", "nose", "mouth", "rest"]
        crop = _png(side["map_crop_png"])
        assert crop.shape == (112, 112, 4)  # BGRA
        x0, y0, x1, y1 = side["image_box"]
        image = _png(side["map_image_png"])
        assert image.shape[2] == 4 and max(image.shape[:2]) == 200  # the face's box, at most 200 px here
        assert image.shape[1] / image.shape[0] == pytest.approx((x1 - x0) / (y1 - y0), rel=0.02)
        assert image[..., 3].max() > 100 and crop[..., 3].max() > 100  # the strongest cells are drawn
    assert body["timings"]["total_ms"] > 0 and body["timings"]["embed_ms"] > 0


def test_json_occlusion_and_v1(server: Server, wild_dir: Path) -> None:
    payload = {
        "image1": base64.b64encode((wild_dir / "obama.jpg").read_bytes()).decode(),
        "image2": base64.b64encode((wild_dir / "biden.jpg").read_bytes()).decode(),
        "method": "occlusion",
        "threshold": 0.3,
    }
    with server.client() as c:
        r = c.post("/v1/explain", json=payload, headers={"Authorization": f"Bearer {KEYS['admin']}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "occlusion" and body["residual"] is None and body["threshold"] == 0.3
    assert body["is_match"] is False and body["face1"]["residual"] is None and body["face1"]["bias"] == 0.0


def test_scope_and_auth(server: Server, wild_dir: Path) -> None:
    with server.client() as c:
        files = _files(wild_dir, "obama.jpg", "obama2.jpg")
        assert c.post("/explain", files=files).status_code == 401
        r = c.post("/explain", files=files, headers={"X-API-Key": KEYS["match"]})
        assert r.status_code == 403 and r.json()["code"] == "forbidden" and "explain" in r.json()["detail"]
        assert c.post("/verify", files=files, headers={"X-API-Key": EXPLAIN_KEY}).status_code == 403


def test_bad_input_as_for_verify(server: Server, wild_dir: Path) -> None:
    blank = cv2.imencode(".png", np.full((240, 320, 3), 127, np.uint8))[1].tobytes()
    with server.client(headers={"X-API-Key": EXPLAIN_KEY}) as c:
        files = {"image1": ("a.jpg", (wild_dir / "obama.jpg").read_bytes()), "image2": ("blank.png", blank)}
        r = c.post("/explain", files=files)
        assert r.status_code == 422 and r.json()["code"] == "no_face"
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["details"]["image"] == "image2"
        r = c.post("/explain", files={"image1": ("a.jpg", (wild_dir / "obama.jpg").read_bytes())})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request"
        r = c.post("/explain", files=_files(wild_dir, "obama.jpg", "obama2.jpg"), data={"method": "gradcam"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request"
        r = c.post(
            "/explain", files=_files(wild_dir, "obama.jpg", "obama2.jpg"), data={"threshold": "0.3", "fmr": "0.001"}
        )
        assert r.status_code == 422
        big = {"image1": ("a.jpg", b"\xff\xd8" + b"0" * 2_100_000), "image2": ("b.jpg", blank)}
        r = c.post("/explain", files=big)
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
        r = c.post("/explain", json={"image1": "http://example.com/a.jpg", "image2": "x"})
        assert r.status_code == 422 and r.json()["code"] == "url_input_disabled"


def test_openapi_documents_explain(server: Server) -> None:
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    op = spec["paths"]["/explain"]["post"]
    assert op["operationId"] == "explain"
    assert "/v1/explain" not in spec["paths"]
    content = op["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert content["application/json"]["example"]["method"] == "auto"
    response = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert response.endswith("/ExplainResponse")
    example = spec["components"]["schemas"]["ExplainResponse"]["examples"][0]
    assert example["method"] == "decomposition" and len(example["face1"]["regions"]) == 4
    assert {"401", "403", "413", "422", "429"} <= set(op["responses"])
