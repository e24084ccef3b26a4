"""The PostgreSQL store against a real PostgreSQL server: the Store contract, replicas, the change log.

Every test runs on a fresh database of the session's throwaway cluster (tests/_pg_util.py,
fixture ``pg_uri``); several ``Gallery`` handles on one URI stand for several replicas.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from _gallery_util import DIM, MODEL, calibration, identities, unit
from _pg_util import PASSWORD, cluster_or_skip

from facematch.errors import (
    DuplicateIdentityError,
    GalleryCorruptError,
    GalleryError,
    IdentityNotFoundError,
    InvalidArgumentError,
    StoreUnavailableError,
    TemplateNotFoundError,
)
from facematch.gallery import Gallery
from facematch.gallery.changes import ChangeLogStore
from facematch.gallery.postgres_store import PostgresStore, is_postgres_uri, mask_uri
from facematch.gallery.sqlite_store import SQLiteStore

CAL = calibration(np.random.default_rng(7))


def _open(uri: str, **kw: object) -> Gallery:
    return Gallery.open(uri, calibration=CAL, **kw)  # type: ignore[arg-type]


def _wait_for(cond, timeout: float, step: float = 0.005) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``cond()`` held (``inf`` when it never did within ``timeout``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return float("inf")


def _store_ids(g: Gallery) -> np.ndarray:
    return np.sort(g._store.template_owners()[0])


# ---- the Store contract: the same answers as the SQLite store -------------------------------------
NAMES = ["b", "a", "Zoë", "zoe", "e\u0301mile", "émile", "😀 smile", "Z", "a b", "ä"]


def _exercise(store, rng_seed: int = 3) -> list[object]:  # type: ignore[no-untyped-def]
    """One scripted session of every Store method; the answers with timestamps dropped."""
    rng = np.random.default_rng(rng_seed)
    out: list[object] = []

    def info(i):  # type: ignore[no-untyped-def]
        return None if i is None else (i.identity_id, i.template_ids, i.metadata)

    vecs = {n: unit(rng.standard_normal((2, 16))) for n in NAMES}
    for n in NAMES:
        w = store.create_identity(n, vecs[n], [f"{n}.jpg", None], metadata={"n": n, "x": [1, 2.5, None]})
        out.append(("create", w.template_ids))
    key_of = {n: store.identity_key(n) for n in NAMES}
    for n in NAMES:
        with pytest.raises(DuplicateIdentityError):
            store.create_identity(n, vecs[n][:1], [None])
    with pytest.raises(IdentityNotFoundError):
        store.add_templates("nobody", vecs["a"][:1], [None])
    out.append(("add", store.add_templates("a", vecs["b"], ["x", "y"]).template_ids))
    out.append(("get", info(store.get_identity("a")), info(store.get_identity("nobody"))))
    # pagination in code-point order (SQLite's BINARY collation; PostgreSQL's "C")
    pages, after = [], None
    while True:
        page = store.list_identities(after, 3)
        if not page:
            break
        pages.append([info(i) for i in page])
        after = page[-1].identity_id
    out.append(("pages", pages))
    by_key = store.identities_by_key([key_of["a"], key_of["Zoë"], 10_000])
    out.append(("by_key", sorted(by_key.values(), key=lambda v: v[0])))
    out.append(("counts", store.counts()))
    tids, owners = store.template_owners()
    name_of = {k: v[0] for k, v in store.identities_by_key(owners.tolist()).items()}
    out.append(("owners", tids.tolist(), [name_of[int(o)] for o in owners]))
    ids, emb = store.embeddings([int(tids[0]), int(tids[-1]), 999_999], 16)
    out.append(("embeddings", ids.tolist(), emb.tobytes()))
    t, _, e = store.embeddings_of_identities([key_of["a"]], 16)
    out.append(("of_identities", sorted(t.tolist()), e.shape))
    out.append(("iter", [(a.tolist(), b.tobytes()) for a, b in store.iter_embeddings(16, batch=7)]))
    out.append(("meta", info(store.set_metadata("b", {"k": "é", "nested": {"z": 1}}))))
    with pytest.raises(IdentityNotFoundError):
        store.set_metadata("nobody", {})
    last = int(tids[-1])
    out.append(("delete_template", store.delete_template(last)))
    with pytest.raises(TemplateNotFoundError):
        store.delete_template(last)
    out.append(("deleted", info(store.delete_identity("zoe"))))
    with pytest.raises(IdentityNotFoundError):
        store.delete_identity("zoe")
    # ids are never reused: the deleted largest id does not come back
    again = store.create_identity("zoe", vecs["zoe"], [None, None]).template_ids
    out.append(("recreated", again, min(again) > last))
    out.append(("counts", store.counts()))
    with pytest.raises(GalleryCorruptError, match="dimension"):
        list(store.iter_embeddings(8))  # the stored rows are 16-D
    store.set_meta({"model_id": "m", "dim": "16"})
    out.append(("init_meta", store.init_meta({"model_id": "other", "fresh": "1"}), store.get_meta("model_id")))
    return out


def test_store_contract_matches_sqlite(tmp_path: Path, pg_uri: str) -> None:
    """The same scripted session gives the same answers from SQLite and PostgreSQL (ids, order, bytes, errors)."""
    public = {n for n in vars(PostgresStore) if not n.startswith("_")}
    assert public <= ChangeLogStore.__abstractmethods__ | {"prune_changes"}, public - ChangeLogStore.__abstractmethods__
    sqlite = SQLiteStore(tmp_path / "g.sqlite3")
    pg = PostgresStore(pg_uri)
    try:
        assert _exercise(pg) == _exercise(sqlite)
        # the change log recorded every write, in order, with the template ids
        changes, pruned = pg.changes_since(0, 1000)
        assert pruned == 0 and [c.seq for c in changes] == sorted(c.seq for c in changes)
        kinds = [c.kind for c in changes]
        assert kinds.count("identity_created") == len(NAMES) + 1 and kinds.count("identity_deleted") == 1
        assert kinds.count("templates_added") == 1 and kinds.count("templates_removed") == 1
        assert "metadata_changed" in kinds and "settings_changed" in kinds
        assert pg.log_position().seq == changes[-1].seq and pg.log_position().identities == len(NAMES)
    finally:
        sqlite.close()
        pg.close()


def test_open_arguments_and_uri_masking(tmp_path: Path, pg_cluster, pg_uri: str) -> None:  # type: ignore[no-untyped-def]
    assert is_postgres_uri("postgresql://u@h/db") and is_postgres_uri("postgres://h") and not is_postgres_uri("a.fmg")
    assert mask_uri("postgresql://u:s3cret@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert mask_uri("postgresql://u@h1,h2/db?password=s3cret&x=1") == "postgresql://u@h1,h2/db?password=***&x=1"
    assert mask_uri("postgresql:///db?service=faces") == "postgresql:///db?service=faces"
    with pytest.raises(InvalidArgumentError, match="not both"):
        Gallery(tmp_path / "g.fmg", catalog_uri=pg_uri)
    with pytest.raises(InvalidArgumentError, match="postgresql://"):
        Gallery(catalog_uri="mysql://h/db")
    with pytest.raises(InvalidArgumentError, match="milvus_uri"):
        Gallery(pg_uri, backend="milvus")
    empty = pg_cluster.uri(pg_cluster.new_database())
    for kw in ({"read_only": True}, {"create": False}):
        with pytest.raises(GalleryError, match="no gallery"):
            Gallery(empty, **kw)
    with Gallery(catalog_uri=pg_uri) as g:
        assert PASSWORD in pg_uri and PASSWORD not in repr(g) and PASSWORD not in str(g.info().to_dict())
        assert g.info().path == mask_uri(pg_uri) and g.info().backend == "faiss"
    with Gallery(pg_uri, read_only=True) as ro, pytest.raises(GalleryError, match="read-only"):
        ro.enroll_embeddings("x", unit(np.ones((1, DIM))), MODEL)


def test_credentials_from_the_libpq_environment(pg_cluster, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """A URI without a password works with PGPASSWORD; a wrong password is 'unavailable', never logged."""
    db = pg_cluster.new_database()
    bare = pg_cluster.uri(db, password=False)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    with Gallery(bare) as g:
        g.enroll_embeddings("a", unit(np.ones((1, DIM))), MODEL)
    monkeypatch.delenv("PGPASSWORD")
    wrong = bare.replace("facematch@", "facematch:not-the-password@")
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreUnavailableError) as err:
        Gallery(wrong)
    assert "not-the-password" not in err.value.message and "***" in err.value.message
    assert "not-the-password" not in caplog.text and PASSWORD not in caplog.text


def test_schemas_keep_galleries_apart(pg_cluster) -> None:  # type: ignore[no-untyped-def]
    db = pg_cluster.new_database()
    pg_cluster.psql("CREATE SCHEMA g1; CREATE SCHEMA g2", db)
    uri = pg_cluster.uri(db)
    v = unit(np.random.default_rng(1).standard_normal((2, DIM)))
    with _open(f"{uri}?options=-csearch_path%3Dg1") as g1, _open(f"{uri}?options=-csearch_path%3Dg2") as g2:
        g1.enroll_embeddings("only-in-g1", v, MODEL)
        g2.enroll_embeddings("only-in-g2", v[:1], MODEL)
        time.sleep(0.3)
        assert [i.identity_id for i in g1.list_identities().items] == ["only-in-g1"] and g1.num_templates == 2
        assert [i.identity_id for i in g2.list_identities().items] == ["only-in-g2"] and g2.num_templates == 1
        assert g1._store.channel != g2._store.channel  # type: ignore[attr-defined]


# ---- replicas: several handles on one database ----------------------------------------------------
def test_replicas_see_each_others_writes_within_the_staleness_bound(pg_uri: str) -> None:
    """LISTEN/NOTIFY wakes a replica at once; without it, polling bounds the staleness by poll_s."""
    rng = np.random.default_rng(0)
    tmpl, centres = identities(12, 3, rng)
    poll_s = 0.5
    with (
        _open(pg_uri) as a,
        _open(pg_uri, poll_s=30.0) as notified,
        _open(pg_uri, listen=False, poll_s=poll_s) as polled,
    ):
        lag_notify, lag_poll = [], []
        for i in range(6):
            a.enroll_embeddings(f"p{i}", tmpl[i], MODEL, metadata={"i": i})
            lag_notify.append(_wait_for(lambda n=i + 1: notified.num_templates == 3 * n, 5.0))
            lag_poll.append(_wait_for(lambda n=i + 1: polled.num_templates == 3 * n, 5.0))
        # notifications: well under the 30 s poll interval this replica would otherwise wait
        assert max(lag_notify) < 1.0, lag_notify
        # polling only: within one interval plus the time to apply
        assert max(lag_poll) <= poll_s + 1.0, lag_poll
        for g in (notified, polled):
            r = g.identify_embeddings(centres[:6], MODEL, k=1)
            assert [x.identity_id for x in r] == [f"p{i}" for i in range(6)]
            assert r[2].candidates[0].metadata == {"i": 2}
        # delete on one replica: gone on the others; metadata changes are read from the database
        notified.delete("p1")
        polled.set_metadata("p2", {"i": 2, "vip": True})
        assert _wait_for(lambda: a.num_templates == 15 and polled.num_templates == 15, 5.0) < poll_s + 1.0
        assert a.identify_embeddings(centres[1], MODEL, k=1)[0].candidates[0].identity_id != "p1"
        assert a.get("p2").metadata == {"i": 2, "vip": True}
        assert len(a) == len(notified) == len(polled) == 5
        for g in (a, notified, polled):
            assert g.verify_consistency() == (15, 15)


def test_concurrent_creation_of_one_identity_gives_one_winner(pg_uri: str) -> None:
    rng = np.random.default_rng(1)
    tmpl, _ = identities(8, 2, rng)
    with _open(pg_uri) as a, _open(pg_uri) as b:
        a.enroll_embeddings("seed", tmpl[0], MODEL)  # bind the model first
        for r in range(1, 8):
            barrier = threading.Barrier(2)

            def enrol(g: Gallery, r: int = r, barrier: threading.Barrier = barrier) -> str:
                barrier.wait()
                try:
                    g.enroll_embeddings(f"new{r}", tmpl[r], MODEL)
                    return "created"
                except DuplicateIdentityError:
                    return "duplicate"

            with ThreadPoolExecutor(2) as pool:
                outcomes = sorted(pool.map(enrol, (a, b)))
            assert outcomes == ["created", "duplicate"], (r, outcomes)
        b.refresh()
        a.refresh()
        assert len(a) == len(b) == 8 and a.num_templates == b.num_templates == 16
        assert a.verify_consistency() == b.verify_consistency() == (16, 16)


def test_concurrent_writers_leave_every_replica_equal_to_the_store(pg_uri: str) -> None:
    """Eight threads on two replicas create, extend, prune and delete at once; a third replica follows.

    Sequence numbers are taken in commit order, so a follower reading ``seq > last`` never skips
    a change that committed late: afterwards every replica holds exactly the store's templates.
    """
    rng = np.random.default_rng(2)
    with _open(pg_uri) as a, _open(pg_uri) as b, _open(pg_uri, read_only=True) as follower:
        a.enroll_embeddings("seed", unit(rng.standard_normal((1, DIM))), MODEL)

        def work(g: Gallery, w: int) -> None:
            r = np.random.default_rng(100 + w)
            for i in range(12):
                name = f"w{w}-{i}"
                g.enroll_embeddings(name, unit(r.standard_normal((2, DIM))), MODEL)
                if i % 3 == 1:
                    g.add_embeddings(name, unit(r.standard_normal((1, DIM))), MODEL)
                if i % 4 == 2:
                    g.remove_template(g.get(name).template_ids[0])
                if i % 5 == 3:
                    g.delete(f"w{w}-{i - 1}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, [a, b] * 4, range(8)))
        expected = _store_ids(a)
        assert expected.size > 100
        for g in (a, b, follower):
            assert _wait_for(lambda g=g: np.array_equal(np.sort(g._sync.owners.template_ids), expected), 5.0) < 5.0
            assert np.array_equal(np.sort(g._index.ids()), expected)  # type: ignore[union-attr]
            assert len(g) == a._store.counts()[0]


def test_replica_follows_the_binding_made_by_another(pg_uri: str) -> None:
    rng = np.random.default_rng(3)
    tmpl, centres = identities(3, 2, rng)
    with _open(pg_uri) as b:
        assert b.model_id is None and b._index is None
        with _open(pg_uri) as a:
            a.enroll_embeddings("x", tmpl[0], MODEL)
            assert _wait_for(lambda: b.num_templates == 2 and b._index is not None, 5.0) < 5.0
            assert b.model_id == MODEL and b.dim == DIM
            assert b.identify_embeddings(centres[0], MODEL, k=1)[0].candidates[0].identity_id == "x"
            # first writer wins: binding to another model is refused, not overwritten
            with pytest.raises(GalleryError, match="holds"):
                b.enroll_embeddings("y", unit(rng.standard_normal((1, 64))), "other-64")


def test_pruned_change_log_makes_a_lagging_replica_resync(pg_uri: str) -> None:
    rng = np.random.default_rng(4)
    tmpl, centres = identities(6, 2, rng)
    with _open(pg_uri) as a, _open(pg_uri, listen=False, poll_s=3600.0) as lagging:
        a.enroll_embeddings("p0", tmpl[0], MODEL)
        lagging.refresh()
        for i in range(1, 6):
            a.enroll_embeddings(f"p{i}", tmpl[i], MODEL)
        a.delete("p0")
        assert lagging.num_templates == 2  # it does not poll (for an hour)
        assert a._store.prune_changes(older_than_s=0.0) > 0  # type: ignore[attr-defined]
        assert lagging.refresh()
        assert lagging._feed is not None and lagging._feed.resyncs == 1
        assert lagging.verify_consistency() == (10, 10) and len(lagging) == 5
        assert lagging.identify_embeddings(centres[3], MODEL, k=1)[0].candidates[0].identity_id == "p3"
        a.enroll_embeddings("p6", tmpl[0], MODEL)  # after the resync the log is followed again
        assert lagging.refresh() and lagging.num_templates == 12


def test_cold_start_builds_the_index_from_the_store(pg_uri: str) -> None:
    """A replica starting against a filled store (more rows than one COPY batch) holds every template."""
    rng = np.random.default_rng(5)
    with _open(pg_uri) as a:
        for i in range(30):
            a.enroll_embeddings(f"id{i}", unit(rng.standard_normal((5, DIM))), MODEL)
        a.delete("id7")
        expected = _store_ids(a)
    chunks = []
    real = PostgresStore.iter_embeddings

    def small_batches(self, dim, batch=50_000):  # type: ignore[no-untyped-def]
        for part in real(self, dim, batch=11):
            chunks.append(part[0].size)
            yield part

    PostgresStore.iter_embeddings = small_batches  # type: ignore[method-assign]
    try:
        with _open(pg_uri) as cold:
            assert np.array_equal(cold._index.ids(), expected) and len(cold) == 29  # type: ignore[union-attr]
            stored = cold._store.embeddings(expected.tolist(), DIM)[1]
            top = cold._index.search(stored, 1)  # type: ignore[union-attr]
            assert np.array_equal(top[1][:, 0], expected) and np.allclose(top[0][:, 0], 1.0, atol=1e-5)
    finally:
        PostgresStore.iter_embeddings = real  # type: ignore[method-assign]
    assert sum(chunks) == expected.size and len(chunks) > 10


def test_database_outage_gives_store_unavailable_and_recovers(caplog) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL stopped under open replicas: calls fail with StoreUnavailableError, then work again."""
    cluster = cluster_or_skip()  # its own: this test stops it
    rng = np.random.default_rng(6)
    tmpl, centres = identities(4, 2, rng)
    try:
        uri = cluster.uri(cluster.new_database())
        with _open(uri, poll_s=0.5) as a, _open(uri, poll_s=0.5) as b, caplog.at_level(logging.INFO):
            a.enroll_embeddings("before", tmpl[0], MODEL)
            assert _wait_for(lambda: b.num_templates == 2, 5.0) < 5.0
            cluster.stop()
            calls = (
                lambda: a.enroll_embeddings("during", tmpl[1], MODEL),
                lambda: a.get("before"),
                lambda: b.identify_embeddings(centres[0], MODEL),
                lambda: b.list_identities(),
            )

            def outcome(call) -> tuple[str, float]:  # type: ignore[no-untyped-def]
                t0 = time.monotonic()
                try:
                    call()
                    return "answered", time.monotonic() - t0
                except StoreUnavailableError:
                    return "unavailable", time.monotonic() - t0

            with ThreadPoolExecutor(len(calls)) as pool:
                outcomes = list(pool.map(outcome, calls))
            assert [o for o, _ in outcomes] == ["unavailable"] * 4
            assert max(s for _, s in outcomes) < 6.0, outcomes  # each fails within the pool's wait: none hangs
            assert len(b) == 1 and b.num_templates == 2  # the in-memory state is kept
            time.sleep(1.0)  # the followers fail meanwhile, and back off
            cluster.start()

            def works() -> bool:
                try:
                    a.enroll_embeddings("after", tmpl[2], MODEL)
                    return True
                except StoreUnavailableError:
                    return False

            assert _wait_for(works, 30.0, step=0.2) < 30.0
            assert _wait_for(lambda: b.num_templates == 4, 15.0) < 15.0  # b's follower is back too
            assert b.identify_embeddings(centres[2], MODEL, k=1)[0].candidates[0].identity_id == "after"
            assert "during" not in a
        assert PASSWORD not in caplog.text
    finally:
        cluster.destroy()


# ---- SQLite and PostgreSQL give the same open-set answers ----------------------------------------
def test_same_open_set_results_as_sqlite_on_celeb24(tmp_path: Path, pg_uri: str, celeb24_embeddings, matcher) -> None:  # type: ignore[no-untyped-def]
    """celeb24, 18 identities enrolled (even crops), 6 held out: identical rank-1 and FPIR from both stores."""
    from facematch.calibration import Calibration

    names = sorted(celeb24_embeddings)
    held = names[::4]
    enrolled = [n for n in names if n not in held]
    feats = np.concatenate([celeb24_embeddings[n] for n in enrolled])
    labels = np.concatenate([[i] * len(celeb24_embeddings[n]) for i, n in enumerate(enrolled)])
    sims = feats @ feats.T
    iu = np.triu_indices(len(feats), 1)
    same = labels[iu[0]] == labels[iu[1]]
    cal = Calibration.from_scores(sims[iu][same], sims[iu][~same], set_name="celeb24-enrolled", command="test")
    probes = np.concatenate([celeb24_embeddings[n][1::2] for n in enrolled])
    truth = [n for n in enrolled for _ in range(len(celeb24_embeddings[n][1::2]))]
    impostors = np.concatenate([celeb24_embeddings[n] for n in held])

    answers = {}
    for kind, where in (("sqlite", tmp_path / "celeb.fmg"), ("postgres", pg_uri)):
        with Gallery.open(where, calibration=cal) as g:
            for n in enrolled:
                g.enroll_embeddings(n, celeb24_embeddings[n][0::2], matcher.model_id)
            closed = g.identify_embeddings(probes, matcher.model_id, k=5, threshold=-1.0)
            genuine = g.identify_embeddings(probes, matcher.model_id, fpir=0.1)
            open_ = g.identify_embeddings(impostors, matcher.model_id, fpir=0.1)
            answers[kind] = {
                "rank1": np.mean([r.candidates[0].identity_id == t for r, t in zip(closed, truth, strict=True)]),
                "fpir": np.mean([not r.is_unknown for r in open_]),
                "dir": np.mean([r.identity_id == t for r, t in zip(genuine, truth, strict=True)]),
                "threshold": open_[0].threshold,
                "ranked": [[(c.identity_id, c.template_id) for c in r.candidates] for r in closed + open_],
                "scores": np.asarray([[c.similarity for c in r.candidates] for r in closed]),
            }
    s, p = answers["sqlite"], answers["postgres"]
    assert s["rank1"] >= 0.98 and s["dir"] >= 0.9
    for key in ("rank1", "fpir", "dir", "threshold", "ranked"):
        assert s[key] == p[key], key
    np.testing.assert_allclose(s["scores"], p["scores"], atol=1e-6)


# ---- PostgreSQL catalogue, vectors in Milvus ------------------------------------------------------
def test_milvus_index_with_postgres_catalogue(tmp_path: Path, pg_uri: str) -> None:
    """Two handles share the PostgreSQL catalogue and one Milvus collection (milvus-lite, in this process).

    Each writes its own commits to the collection and follows the other's through the change
    log; Milvus is never the source of truth: an emptied collection is refilled from PostgreSQL.
    """
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    rng = np.random.default_rng(8)
    tmpl, centres = identities(6, 2, rng)
    lite = str(tmp_path / "milvus.db")
    with _open(pg_uri, backend="milvus", milvus_uri=lite) as a:
        a.enroll_embeddings("p0", tmpl[0], MODEL)  # binds and creates the collection (before b opens it:
        b = _open(pg_uri, milvus_uri=lite)  # milvus-lite's embedded server is not safe to start from two threads)
        for i in range(1, 4):
            a.enroll_embeddings(f"p{i}", tmpl[i], MODEL)
        assert _wait_for(lambda: b.num_templates == 8, 5.0) < 5.0
        assert b.backend == "milvus" and "milvus" in b.info().index
        assert [r.identity_id for r in b.identify_embeddings(centres[:4], MODEL, k=1)] == ["p0", "p1", "p2", "p3"]
        b.enroll_embeddings("p4", tmpl[4], MODEL)
        b.delete("p0")
        assert _wait_for(lambda: a.num_templates == 8, 5.0) < 5.0
        assert a.identify_embeddings(centres[4], MODEL, k=1)[0].identity_id == "p4"
        assert a.identify_embeddings(centres[0], MODEL, k=1)[0].candidates[0].identity_id != "p0"
        assert a.verify_consistency() == b.verify_consistency() == (8, 8)
        index = a._index
        assert index is not None
        index.remove(index.ids())  # the collection loses every vector...
        b.close()
    with _open(pg_uri, milvus_uri=lite) as again:  # ...and a writer's open refills it from PostgreSQL
        assert again.verify_consistency() == (8, 8)
        assert again.identify_embeddings(centres[3], MODEL, k=1)[0].identity_id == "p3"


def test_writes_fail_cleanly_on_a_dropped_connection(pg_uri: str, pg_cluster) -> None:  # type: ignore[no-untyped-def]
    """Connections killed by the server (a failover, an admin) are replaced: the next calls succeed."""
    rng = np.random.default_rng(9)
    with _open(pg_uri) as g:
        g.enroll_embeddings("a", unit(rng.standard_normal((1, DIM))), MODEL)
        db = pg_uri.rsplit("/", 1)[1]
        pg_cluster.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        g.enroll_embeddings("b", unit(rng.standard_normal((1, DIM))), MODEL)  # the pool's check replaced them
        assert g.get("b").num_templates == 1
        import psycopg

        with psycopg.connect(pg_uri) as conn:
            assert conn.execute("SELECT count(*) FROM facematch_templates").fetchone() == (2,)


def test_an_embedded_gallery_moves_into_postgres(tmp_path: Path, pg_uri: str) -> None:
    """export_to from SQLite, import_from into PostgreSQL: the same identities, sources and answers."""
    rng = np.random.default_rng(10)
    tmpl, centres = identities(5, 3, rng)
    with _open(str(tmp_path / "old.fmg")) as old:
        for i in range(5):
            names = [f"p{i}-{j}.jpg" for j in range(3)]
            old.enroll_embeddings(f"p{i}", tmpl[i], MODEL, metadata={"i": i}, sources=names)
        old.export_to(tmp_path / "old.zip")
        before = old.identify_embeddings(centres, MODEL, k=3)
        old_sources = {f"p{i}": sorted(old.template_sources(f"p{i}").values()) for i in range(5)}
    with _open(pg_uri) as new, _open(pg_uri) as replica:
        report = new.import_from(tmp_path / "old.zip")
        assert len(report.imported) == 5 and report.templates == 15
        assert {f"p{i}": sorted(new.template_sources(f"p{i}").values()) for i in range(5)} == old_sources
        assert _wait_for(lambda: replica.num_templates == 15, 5.0) < 5.0
        for g in (new, replica):
            after = g.identify_embeddings(centres, MODEL, k=3)
            assert [[c.identity_id for c in r.candidates] for r in after] == [
                [c.identity_id for c in r.candidates] for r in before
            ]
            assert [r.candidates[0].metadata for r in after] == [{"i": i} for i in range(5)]
        assert replica.verify_embedding("p2", centres[2], MODEL, threshold=0.5).is_match
        assert not replica.verify_embedding("p3", centres[2], MODEL, threshold=0.5).is_match
