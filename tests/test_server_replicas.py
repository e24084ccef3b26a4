"""Several ``facematch serve`` replicas on one PostgreSQL gallery: real servers, real models, real photos.

Each replica is a real uvicorn process on its own loopback port (tests/_server_util.py) with
``--gallery postgresql://...``; the database is a fresh one on the session's throwaway
PostgreSQL server (tests/_pg_util.py). The bounded staleness under test: a change
acknowledged by one replica is searched by the others within ``GALLERY_POLL_S``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from _pg_util import PASSWORD, cluster_or_skip
from _server_util import Server, auth

from facematch.gallery import Gallery

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")

POLL_S = 1.0  # the replicas' FACEMATCH_GALLERY_POLL_S: the staleness bound without notifications


def _replica(tmp: Path, uri: str, **settings: Any) -> Server:
    return Server(tmp, gallery=uri, gallery_poll_s=POLL_S, max_k=1000, **settings)  # type: ignore[arg-type]


def _start_all(*servers: Server) -> None:
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: s.start(), servers))


def _image(wild_dir: Path, name: str) -> tuple[str, bytes]:
    return (name, (wild_dir / name).read_bytes())


def _enrol(c: httpx.Client, wild_dir: Path, identity: str, image: str, **extra: str) -> httpx.Response:
    return c.post(
        "/gallery/identities", data={"identity_id": identity, **extra}, files={"images": _image(wild_dir, image)}
    )


def _identify(c: httpx.Client, wild_dir: Path, image: str, k: int = 5) -> dict[str, Any]:
    r = c.post("/identify", files={"image": _image(wild_dir, image)}, data={"k": str(k)})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["results"][0]
    return result


def _lag_until(cond, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds from now to the start of the first call of ``cond()`` that held (``inf`` if none did)."""
    t0 = time.monotonic()
    while True:
        started = time.monotonic()
        if cond():
            return started - t0
        if started - t0 > timeout:
            return float("inf")
        time.sleep(0.02)


def _store_templates(uri: str) -> dict[str, list[int]]:
    """identity id -> template ids, read from the database directly."""
    import psycopg

    with psycopg.connect(uri) as conn:
        rows = conn.execute(
            "SELECT i.name, t.id FROM facematch_identities i JOIN facematch_templates t ON t.identity = i.id"
        ).fetchall()
    out: dict[str, list[int]] = {}
    for name, tid in rows:
        out.setdefault(name, []).append(int(tid))
    return out


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, pg_cluster):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("replicas")
    uri = pg_cluster.uri(pg_cluster.new_database())
    a, b = _replica(tmp, uri), _replica(tmp, uri)
    try:
        _start_all(a, b)
        yield a, b, uri
    finally:
        a.stop()
        b.stop()
    assert PASSWORD not in a.log() + b.log()  # the URI is logged masked


def _templates(c: httpx.Client) -> int:
    """How many templates the replica's index holds (its /readyz; a cheap call, unlike a search)."""
    return int(c.get("/readyz").json()["gallery"]["templates"])


def test_write_on_one_replica_is_served_by_the_other(replicas, wild_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The staleness is timed on /readyz (the index's template count), then checked with a search."""
    a, b, uri = replicas
    with a.client(headers=auth("admin")) as ca, b.client(headers=auth("admin")) as cb:
        r = _enrol(ca, wild_dir, "obama", "obama.jpg", metadata='{"office": "44"}')
        assert r.status_code == 201, r.text
        lag = _lag_until(lambda: _templates(cb) == 1, 2 * POLL_S)
        assert lag < POLL_S, f"replica B held the enrolment {lag:.2f} s after A acknowledged it"
        assert _identify(cb, wild_dir, "obama3.jpg")["identity_id"] == "obama"
        assert cb.get("/gallery/identities/obama").json()["metadata"] == {"office": "44"}

        r = _enrol(cb, wild_dir, "biden", "biden.jpg")
        assert r.status_code == 201, r.text
        assert _lag_until(lambda: _templates(ca) == 2, 2 * POLL_S) < POLL_S
        assert _identify(ca, wild_dir, "biden2.jpg")["identity_id"] == "biden"

        # metadata written by another process (an admin tool on the SDK): both replicas answer it
        with Gallery.open(uri) as admin:
            admin.set_metadata("biden", {"office": "46"})
        assert ca.get("/gallery/identities/biden").json()["metadata"] == {"office": "46"}
        assert _identify(cb, wild_dir, "biden2.jpg")["candidates"][0]["metadata"] == {"office": "46"}

        # delete on B: gone on A (reads at once, searches within the staleness)
        assert cb.delete("/gallery/identities/obama").status_code == 200
        assert ca.get("/gallery/identities/obama").status_code == 404
        assert _lag_until(lambda: _templates(ca) == 1, 2 * POLL_S) < POLL_S
        found = _identify(ca, wild_dir, "obama3.jpg")
        assert found["identity_id"] != "obama" and "obama" not in [c["identity_id"] for c in found["candidates"]]
        for c in (ca, cb):
            ready = c.get("/readyz").json()["gallery"]
            assert (ready["identities"], ready["templates"]) == (1, 1)


def test_concurrent_enrolment_of_one_identity_gives_201_and_409(replicas, wild_dir: Path) -> None:  # type: ignore[no-untyped-def]
    a, b, uri = replicas
    with a.client(headers=auth("enroll")) as ca, b.client(headers=auth("enroll")) as cb:
        for r in range(4):
            barrier = threading.Barrier(2)

            def post(c: httpx.Client, r: int = r, barrier: threading.Barrier = barrier) -> httpx.Response:
                barrier.wait()
                return _enrol(c, wild_dir, f"twin{r}", "kit_harington1.jpg")

            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(post, (ca, cb)))
            statuses = sorted(x.status_code for x in answers)
            assert statuses == [201, 409], [x.text for x in answers]
            loser = next(x for x in answers if x.status_code == 409)
            assert loser.headers["content-type"].startswith("application/problem+json")
            assert loser.json()["code"] == "duplicate_identity"
            assert len(_store_templates(uri)[f"twin{r}"]) == 1


def test_kill_9_of_a_replica_loses_no_acknowledged_enrolment(tmp_path: Path, pg_cluster, wild_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Ten cycles: enrol on A in a loop, ``kill -9`` A at a random moment, restart it.

    Every enrolment A acknowledged is in the store and identifiable from B (which never went
    down); after the restarts A's index holds exactly the store's templates.
    """
    uri = pg_cluster.uri(pg_cluster.new_database())
    a, b = _replica(tmp_path, uri), _replica(tmp_path, uri)
    acked: list[str] = []
    rnd = random.Random(17)
    image = _image(wild_dir, "obama2.jpg")
    try:
        _start_all(a, b)
        for cycle in range(10):
            stop = threading.Event()

            def writer(cycle: int = cycle, stop: threading.Event = stop) -> None:
                with a.client(headers=auth("enroll"), timeout=10.0) as c:
                    for i in range(40):  # bounded; the kill comes long before
                        if stop.is_set():
                            return
                        name = f"c{cycle:02d}-{i:02d}"
                        try:
                            r = c.post("/gallery/identities", data={"identity_id": name}, files={"images": image})
                        except httpx.TransportError:
                            return
                        assert r.status_code == 201, r.text
                        acked.append(name)

            before = len(acked)
            t = threading.Thread(target=writer)
            t.start()
            _lag_until(lambda before=before: len(acked) > before, 30.0)  # one acknowledged, the next in flight
            time.sleep(rnd.uniform(0.0, 0.5))
            a.kill9()  # mid-enrolment: no shutdown hook runs
            stop.set()
            t.join(timeout=30)
            a.start()
        assert len(acked) >= 10, f"only {len(acked)} enrolments were acknowledged in 10 cycles"

        stored = _store_templates(uri)
        missing = [n for n in acked if n not in stored]
        assert not missing, f"acknowledged enrolments lost: {missing[:10]}"
        copies = {n: t for n, ts in stored.items() for t in ts}  # one template each
        assert len(copies) == len(stored)
        for srv in (b, a):  # B never went down; A restarted ten times
            with srv.client(headers=auth("match")) as c:
                ready = c.get("/readyz").json()["gallery"]
                assert (ready["identities"], ready["templates"]) == (len(copies), len(copies))
                found = _identify(c, wild_dir, "obama4.jpg", k=len(copies) + 5)["candidates"]
                # every stored template is in the replica's index, under its own template id
                assert {x["identity_id"]: x["template_id"] for x in found} == copies
    finally:
        a.stop()
        b.stop()


def test_postgres_restart_under_a_running_replica(tmp_path: Path, wild_dir: Path) -> None:
    """While PostgreSQL is down requests answer 503 problem+json (never 500) and recover by themselves."""
    cluster = cluster_or_skip()  # its own: this test stops it
    try:
        uri = cluster.uri(cluster.new_database())
        with _replica(tmp_path, uri) as srv, srv.client(headers=auth("admin")) as c:
            assert _enrol(c, wild_dir, "obama", "obama.jpg").status_code == 201
            cluster.stop()
            calls = [
                lambda: c.get("/gallery/identities"),
                lambda: c.get("/gallery/identities/obama"),
                lambda: c.post("/identify", files={"image": _image(wild_dir, "obama3.jpg")}),
                lambda: _enrol(c, wild_dir, "biden", "biden.jpg"),
            ]
            with ThreadPoolExecutor(len(calls)) as pool:
                down = list(pool.map(lambda f: f(), calls))
            for r in down:
                assert r.status_code == 503, r.text
                assert r.headers["content-type"].startswith("application/problem+json")
                assert r.json()["code"] == "store_unavailable" and int(r.headers["retry-after"]) >= 1
                assert PASSWORD not in r.text
            assert c.get("/healthz").status_code == 200  # the process itself is fine
            cluster.start()
            assert _lag_until(lambda: _enrol(c, wild_dir, "biden", "biden.jpg").status_code == 201, 30.0) < 30.0
            assert _identify(c, wild_dir, "obama3.jpg")["identity_id"] == "obama"
            assert _identify(c, wild_dir, "biden2.jpg")["identity_id"] == "biden"
            log = srv.log()
        assert "internal_error" not in log and "Traceback" not in log and PASSWORD not in log
    finally:
        cluster.destroy()
