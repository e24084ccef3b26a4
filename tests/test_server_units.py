"""Server parts in-process: settings and keys, authentication, the micro-batcher, dependency overrides."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from facematch.server.batcher import Admission, MicroBatcher
from facematch.server.errors import ForbiddenError, OverloadedError, UnauthorizedError, UrlInputDisabledError
from facematch.server.inputs import decode_base64
from facematch.server.security import KeyRing, presented_key
from facematch.server.settings import ApiKey, Settings, hash_key, is_loopback
from pydantic import ValidationError

# ---- settings and keys --------------------------------------------------------------------------


def test_plaintext_keys_are_hashed_and_dropped() -> None:
    k = ApiKey(name="a", key="correct horse battery", scopes=("match",))
    assert k.key is None and k.key_sha256 == hash_key("correct horse battery")
    assert "correct horse" not in repr(k) and "correct horse" not in k.model_dump_json()
    h = ApiKey(name="b", key_sha256=hash_key("x" * 10).upper())
    assert h.key_sha256 == hash_key("x" * 10)
    with pytest.raises(ValidationError):
        ApiKey(name="c")  # neither
    with pytest.raises(ValidationError) as bad:
        ApiKey(name="c", key="sh0rt")
    assert "sh0rt" not in str(bad.value)  # pydantic would echo the input
    with pytest.raises(ValidationError) as both:
        Settings(api_keys=[{"name": "d", "key": "correct horse battery", "key_sha256": "00"}])
    assert "horse" not in str(both.value)
    with pytest.raises(ValidationError):
        ApiKey(name="c", key="long enough key", scopes=("root",))  # type: ignore[arg-type]


def test_settings_from_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACEMATCH_API_KEYS", '[{"name": "ops", "key": "0123456789ab", "scopes": ["admin"]}]')
    monkeypatch.setenv("FACEMATCH_MAX_K", "7")
    env = tmp_path / "server.env"
    env.write_text("FACEMATCH_QUEUE_SIZE=5\nFACEMATCH_ENABLE_EMBED=true\nFACEMATCH_MAX_K=9\n")
    s = Settings.load(env)
    assert s.auth_enabled and s.api_keys[0].key_sha256 == hash_key("0123456789ab")
    assert s.queue_size == 5 and s.enable_embed is True
    assert s.max_k == 7  # the environment wins over the file
    with pytest.raises(ValueError, match="does not exist"):
        Settings.load(tmp_path / "missing.env")


def test_no_keys_only_on_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    Settings(host="127.0.0.1").check_exposure()
    with pytest.raises(ValueError, match="without API keys"):
        Settings(host="0.0.0.0").check_exposure()
    Settings(host="0.0.0.0", api_keys=[ApiKey(name="a", key="0123456789ab")]).check_exposure()


def test_keyring_scopes_and_headers() -> None:
    ring = KeyRing(
        [
            ApiKey(name="m", key="match-key-123", scopes=("match",)),
            ApiKey(name="root", key="admin-key-123", scopes=("admin",)),
        ]
    )
    m = ring.authenticate("match-key-123")
    assert m.name == "m" and ring.authorize(m, "match") is m
    with pytest.raises(ForbiddenError):
        ring.authorize(m, "enroll")
    root = ring.authenticate("admin-key-123")
    for scope in ("match", "enroll", "embed", "admin"):
        ring.authorize(root, scope)  # type: ignore[arg-type]
    for bad in (None, "", "match-key-124", "x" * 10_000):
        with pytest.raises(UnauthorizedError):
            ring.authenticate(bad)
    assert KeyRing([]).authenticate(None).name == "anonymous"
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("Basic abc", "xyz") == "xyz"
    assert presented_key(None, " k ") == "k"
    assert presented_key(None, None) is None


def test_base64_inputs() -> None:
    assert decode_base64("aGVsbG8=", "x", 100) == b"hello"
    assert decode_base64("data:image/png;base64,aGVsbG8=", "x", 100) == b"hello"
    with pytest.raises(UrlInputDisabledError):
        decode_base64("https://example.com/a.jpg", "x", 100)


# ---- micro-batcher ------------------------------------------------------------------------------


class RecordingEmbedder:
    """A deterministic embedding function that records the batch sizes it was called with."""

    def __init__(self, delay: float = 0.02) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.sizes.append(len(crops))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)  # blocking, as a model call is
        flat = crops.reshape(len(crops), -1)[:, :8].astype(np.float32) + 1.0
        norms = np.linalg.norm(flat, axis=1)
        return flat / norms[:, None], norms


def crops_of(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 112, 112, 3), value, np.uint8)


def test_batcher_coalesces_concurrent_requests_and_keeps_the_loop_free() -> None:
    fn = RecordingEmbedder()

    async def scenario() -> tuple[list[np.ndarray], int]:
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(fn, pool, max_batch=8, max_wait_s=0.01, max_pending=100)
            ticks = 0
            stop = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not stop.is_set():
                    ticks += 1
                    await asyncio.sleep(0.001)

            t = asyncio.create_task(ticker())
            outs = await asyncio.gather(*(b.embed(crops_of(i, 1 + i % 2)) for i in range(20)))
            stop.set()
            await t
            await b.close()
            return outs, ticks

    outs, ticks = asyncio.run(scenario())
    assert sum(fn.sizes) == sum(1 + i % 2 for i in range(20))
    assert max(fn.sizes) <= 8 and len(fn.sizes) < 20  # batched, never above max_batch
    assert all(name.startswith("ThreadPoolExecutor") for name in fn.threads)  # off the event loop
    assert ticks > 20  # the loop kept running while the embedder blocked
    for i, (emb, norms) in enumerate(outs):  # each caller got its own rows back
        assert emb.shape == (1 + i % 2, 8) and norms.shape == (1 + i % 2,)
        want_emb, want_norms = fn(crops_of(i, 1 + i % 2))
        np.testing.assert_allclose(emb, want_emb, rtol=1e-6)
        np.testing.assert_allclose(norms, want_norms, rtol=1e-6)


def test_batcher_queue_is_bounded_and_errors_reach_callers() -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(RecordingEmbedder(delay=0.2), pool, max_batch=2, max_wait_s=0.0, max_pending=3)
            first = asyncio.create_task(b.embed(crops_of(1, 2)))
            await asyncio.sleep(0.05)  # the first batch is running; the queue is empty again
            queued = asyncio.create_task(b.embed(crops_of(2, 3)))
            await asyncio.sleep(0)
            with pytest.raises(OverloadedError):
                await b.embed(crops_of(3, 1))
            await first
            await queued
            await b.close()

            def boom(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                raise RuntimeError("model failed")

            bad = MicroBatcher(boom, pool, max_batch=4, max_wait_s=0.0)
            with pytest.raises(RuntimeError, match="model failed"):
                await bad.embed(crops_of(1))
            assert (await MicroBatcher(RecordingEmbedder(0), pool).embed(crops_of(4)))[0].shape == (1, 8)
            await bad.close()

    asyncio.run(scenario())


def test_admission_limit() -> None:
    a = Admission(2)
    a.enter()
    a.enter()
    with pytest.raises(OverloadedError):
        a.enter()
    a.leave()
    a.enter()
    assert a.active == 2


# ---- the app in-process: dependency overrides ---------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using `httpx`")
def test_dependency_override_and_not_ready(tmp_path: Path, matcher, wild_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from facematch.server.app import create_app
    from facematch.server.deps import get_gallery, get_matcher
    from fastapi.testclient import TestClient

    from facematch.gallery import Gallery

    app = create_app(Settings(gallery=None))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        for _ in range(200):  # the lifespan loads the models in the background
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        r = client.get("/gallery/identities")
        assert r.status_code == 404 and r.json()["code"] == "gallery_not_configured"
        g = Gallery.open(tmp_path / "g.fmg", matcher=matcher)
        try:
            g.enroll("obama", [wild_dir / "obama.jpg"])
            app.dependency_overrides[get_gallery] = lambda: g
            app.dependency_overrides[get_matcher] = lambda: matcher
            page = client.get("/v1/gallery/identities").json()
            assert [i["identity_id"] for i in page["items"]] == ["obama"]
            probe = (wild_dir / "obama2.jpg").read_bytes()
            res = client.post("/identify", files={"image": ("p.jpg", probe)}).json()
            assert res["results"][0]["identity_id"] == "obama"
        finally:
            app.dependency_overrides.clear()
            g.close()
    second = create_app(Settings())  # several apps in one process: separate metric registries
    assert second.state.facematch.metrics.registry is not app.state.facematch.metrics.registry


# ---- the serve command refuses unsafe setups before starting uvicorn -----------------------------


def _serve(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEMATCH_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "facematch.server", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_serve_refuses_public_bind_without_keys_and_shared_writers(tmp_path: Path) -> None:
    r = _serve("--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2 and "without API keys" in r.stderr
    r = _serve("--gallery", str(tmp_path / "g.fmg"), "--workers", "2", "--port", "0")
    assert r.returncode == 2 and "--read-only" in r.stderr
    r = _serve("--port", "0", env_extra={"FACEMATCH_API_KEYS": '[{"name": "x", "key": "sh0rt"}]'})
    assert r.returncode == 2 and "invalid settings" in r.stderr and "shorter than" in r.stderr
    assert "sh0rt" not in r.stderr  # a rejected key is never echoed


# ---- the OpenAPI document ----------------------------------------------------------------------


def test_every_model_and_json_body_has_examples_that_validate() -> None:
    """Examples in /openapi.json are real: each one validates against its own model, base64 decodes."""
    import base64

    from facematch.server import schemas
    from facematch.server.app import create_app
    from pydantic import BaseModel

    spec = create_app(Settings()).openapi()
    own = {
        n for n in dir(schemas) if isinstance(getattr(schemas, n), type) and issubclass(getattr(schemas, n), BaseModel)
    }
    for name, schema in spec["components"]["schemas"].items():
        if name not in own:  # FastAPI's HTTPValidationError/ValidationError are never sent (Problem is)
            continue
        examples = schema.get("examples")
        assert examples, f"{name} has no example"
        for example in examples:
            getattr(schemas, name).model_validate(example)
    bodies = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            media = op.get("requestBody", {}).get("content", {}).get("application/json")
            if media is None:
                continue
            bodies += 1
            example = media.get("example")
            assert example, f"{method.upper()} {path}: the JSON body has no example"
            for field in ("image", "image1", "image2", "images"):
                values = example.get(field, [])
                for value in values if isinstance(values, list) else [values]:
                    assert base64.b64decode(value, validate=True)[:4] == b"\x89PNG"
    assert bodies >= 6  # verify, identify, detect, embed, createIdentity, addTemplates (each listed once)
