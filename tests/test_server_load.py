"""Under load: 32 concurrent clients get correct answers, batches form, memory stays flat; a full queue says 429.

The load phase runs ``FACEMATCH_LOAD_SECONDS`` (default 12) seconds after a warm-up.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _server_util import Server, auth

pytestmark = pytest.mark.slow  # 32 concurrent clients against a real server

CLIENTS = 32
LOAD_SECONDS = float(os.environ.get("FACEMATCH_LOAD_SECONDS", "12"))
WARMUP_SECONDS = 4.0
RSS_GROWTH_LIMIT_MIB = 64

PAIRS = [
    ("obama.jpg", "obama2.jpg", True),
    ("obama.jpg", "biden.jpg", False),
    ("kit_harington1.jpg", "kit_harington2.jpg", True),
    ("rose_leslie1.jpg", "kit_harington1.jpg", False),
    ("biden.jpg", "biden2.jpg", True),
    ("alex_lacamoire2.jpg", "rose_leslie2.jpg", False),
]


@pytest.fixture(scope="module")
def images(wild_dir: Path) -> dict[str, bytes]:
    return {name: (wild_dir / name).read_bytes() for pair in PAIRS for name in pair[:2]}


async def _hammer(
    url: str, images: dict[str, bytes], seconds: float, clients: int
) -> tuple[Counter[str], list[str], float]:
    """``clients`` concurrent verify loops for ``seconds``; returns outcome counts, wrong answers, elapsed."""
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, headers=auth("match"), timeout=120.0, limits=limits) as c:

        async def worker(i: int) -> None:
            j = i
            while time.monotonic() < deadline:
                a, b, same = PAIRS[j % len(PAIRS)]
                j += 1
                files = {"image1": (a, images[a]), "image2": (b, images[b])}
                r = await c.post("/verify", files=files)
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1
                    outcomes["429"] += 1
                    await asyncio.sleep(0.05)
                    continue
                outcomes[str(r.status_code)] += 1
                if r.status_code != 200 or r.json()["is_match"] is not same:
                    wrong.append(f"{a} vs {b}: {r.status_code} {r.text[:200]}")

        start = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        return outcomes, wrong, time.monotonic() - start


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(tmp_path_factory.mktemp("load"), queue_size=CLIENTS * 2) as srv:
        yield srv


def test_32_clients_correct_batched_and_flat_memory(server: Server, images: dict[str, bytes]) -> None:
    asyncio.run(_hammer(server.url, images, WARMUP_SECONDS, CLIENTS))
    rss_before = server.rss_kib()
    outcomes, wrong, _elapsed = asyncio.run(_hammer(server.url, images, LOAD_SECONDS, CLIENTS))
    rss_after = server.rss_kib()
    assert not wrong, wrong[:5]
    assert set(outcomes) <= {"200", "429"}, outcomes
    assert outcomes["200"] >= CLIENTS, outcomes
    growth_mib = (rss_after - rss_before) / 1024
    assert growth_mib < RSS_GROWTH_LIMIT_MIB, f"RSS grew {growth_mib:.1f} MiB ({rss_before} -> {rss_after} KiB)"
    metrics = httpx.get(f"{server.url}/metrics").text
    count = float(re.search(r"facematch_inference_batch_size_count (\S+)", metrics).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"facematch_inference_batch_size_sum (\S+)", metrics).group(1))  # type: ignore[union-attr]
    assert total / count > 2.0, f"mean batch {total / count:.2f} crops: concurrent requests were not batched"
    assert "facematch_queue_depth 0.0" in metrics  # every admitted request has left


def test_full_queue_answers_429_with_retry_after(tmp_path: Path, images: dict[str, bytes]) -> None:
    with Server(tmp_path, queue_size=2, retry_after_s=2) as srv:
        outcomes, wrong, _ = asyncio.run(_hammer(srv.url, images, 4.0, 16))
        assert not wrong, wrong[:5]
        assert outcomes["429"] > 0 and outcomes["200"] > 0, outcomes
        assert set(outcomes) <= {"200", "429"}, outcomes
        r = httpx.post(
            f"{srv.url}/verify",
            headers=auth("match"),
            files={"image1": ("a", images["obama.jpg"]), "image2": ("b", images["obama2.jpg"])},
        )
        assert r.status_code == 200  # the queue drained
        text = httpx.get(f"{srv.url}/metrics").text
        assert re.search(r"facematch_rejected_total [1-9]", text)
