"""What a deployer sees around the API on a real server: CORS for browser clients, and /metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from _server_util import Server, auth

ORIGIN = "https://kiosk.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("deploy")
    with Server(tmp, cors_origins=f"{ORIGIN}, http://localhost:3000") as srv:
        yield srv


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


def test_cors_preflight_and_responses(server: Server, wild_dir: Path) -> None:
    with server.client() as c:
        r = c.options("/verify", headers=_preflight(ORIGIN))
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert r.headers["access-control-max-age"] == "600"
        r = c.options(
            "/gallery/identities/alice", headers={**_preflight(ORIGIN), "Access-Control-Request-Method": "PATCH"}
        )
        assert r.status_code == 200 and "PATCH" in r.headers["access-control-allow-methods"]
        bad = c.options("/verify", headers=_preflight("https://evil.example"))
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
        # actual requests carry the header, errors (problem+json) included; Retry-After is exposed
        files = {"image1": ("a.jpg", (wild_dir / "obama.jpg").read_bytes()), "image2": ("b.jpg", b"junk")}
        r = c.post("/verify", files=files, headers={"Origin": ORIGIN, **auth("match")})
        assert r.status_code == 422 and r.headers["access-control-allow-origin"] == ORIGIN
        assert "retry-after" in r.headers["access-control-expose-headers"].lower()
        r = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_is_off_by_default() -> None:
    from facematch.server.app import create_app
    from facematch.server.settings import Settings
    from fastapi.testclient import TestClient

    with TestClient(create_app(Settings())) as c:
        r = c.options("/verify", headers=_preflight(ORIGIN))
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    for bad in ({"cors_origins": ["https://a.example/path"]}, {"cors_origins": ["*"], "cors_allow_credentials": True}):
        with pytest.raises(ValueError):
            Settings(**bad)
    assert Settings(cors_origins="https://a.example,http://b.example:8080/").cors_origins == [
        "https://a.example",
        "http://b.example:8080",
    ]


def test_metrics(server: Server) -> None:
    with server.client() as c:
        c.get("/openapi.json")
        c.get("/docs")
        c.get("/docs/assets/swagger-ui.css")
        c.get("/nowhere")
        c.options("/verify", headers=_preflight(ORIGIN))
        c.get("/gallery/identities", headers=auth("enroll"))  # 404: no gallery on this server
        text = c.get("/metrics").text
    for family in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "python_info"):
        assert re.search(rf"^{family}(\{{.*\}})? ", text, re.M), family
    assert "_created" not in text
    for route in ("/openapi.json", "/docs", "/docs/assets", "cors_preflight", "unmatched", "/gallery/identities"):
        assert f'route="{route}"' in text, route
    assert 'facematch_http_requests_total{method="GET",route="/gallery/identities",status="404"}' in text
    buckets = [ln for ln in text.splitlines() if ln.startswith("facematch_http_request_duration_seconds_bucket")]
    assert buckets and all(re.search(r'status_class="[1-5]xx"', ln) for ln in buckets)
    assert not any('status="' in ln for ln in buckets)  # exact codes only on the counter
