"""The Store interface on real SQLite files: each write method, its transaction, and the identity-id rule."""

from __future__ import annotations

import sqlite3
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from _gallery_util import DIM, MODEL, unit

from facematch.errors import (
    DuplicateIdentityError,
    IdentityNotFoundError,
    InvalidArgumentError,
    TemplateNotFoundError,
)
from facematch.gallery import Gallery
from facematch.gallery.sqlite_store import SQLiteStore
from facematch.gallery.store import MAX_IDENTITY_LEN, Store, validate_identity_id


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, DIM)))


def _snapshot(path: Path) -> tuple[list[tuple[object, ...]], ...]:
    """Every row of the three tables, read through a separate connection."""
    with sqlite3.connect(path) as db:
        return tuple(
            db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in ("meta", "identities", "templates")
        )


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SQLiteStore(tmp_path / "gallery.sqlite3")
    yield s
    s.close()


def _trigger(path: Path, sql: str) -> None:
    """Install a trigger that makes a write fail midway through its transaction (a real SQLite abort)."""
    with sqlite3.connect(path) as db:
        db.execute(sql)


def test_the_sqlite_store_is_the_interface_and_nothing_more() -> None:
    assert issubclass(SQLiteStore, Store)
    public = {n for n in vars(SQLiteStore) if not n.startswith("_")}
    assert public <= Store.__abstractmethods__, public - Store.__abstractmethods__
    with pytest.raises(TypeError):
        Store()  # type: ignore[abstract]


def test_create_identity_and_add_templates(store: SQLiteStore, tmp_path: Path) -> None:
    v = _vecs(5)
    w1 = store.create_identity("alice", v[:2], ["a1.jpg", "a2.jpg"], metadata={"team": "red"})
    w2 = store.create_identity("bob", v[2:3], [None])
    assert w1.identity_key != w2.identity_key and len(w1.template_ids) == 2
    assert w1.template_ids[0] < w1.template_ids[1] < w2.template_ids[0]
    info = store.get_identity("alice")
    assert info is not None and info.template_ids == w1.template_ids and info.metadata == {"team": "red"}
    w3 = store.add_templates("alice", v[3:5], ["a3.jpg", "a4.jpg"])
    assert w3.identity_key == w1.identity_key and w3.template_ids[0] > w2.template_ids[0]
    assert store.get_identity("alice").template_ids == w1.template_ids + w3.template_ids  # type: ignore[union-attr]
    ids, vecs = store.embeddings(list(w3.template_ids), DIM)
    assert ids.tolist() == list(w3.template_ids) and np.array_equal(vecs, v[3:5])
    tids, owners = store.template_owners()
    assert tids.tolist() == sorted(w1.template_ids + w2.template_ids + w3.template_ids)
    assert owners.tolist().count(w1.identity_key) == 4 and store.counts() == (2, 5)
    assert store.identity_key("alice") == w1.identity_key and store.identity_key("carol") is None
    assert store.identities_by_key([w2.identity_key, 10**9]) == {w2.identity_key: ("bob", {})}
    with sqlite3.connect(tmp_path / "gallery.sqlite3") as db:  # the file layout existing galleries have
        rows = db.execute("SELECT source FROM templates ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["a1.jpg", "a2.jpg", None, "a3.jpg", "a4.jpg"]


def test_duplicates_come_from_the_unique_constraint(tmp_path: Path) -> None:
    """Two handles on one file: the second create of an id fails by the constraint, with nothing written."""
    path = tmp_path / "gallery.sqlite3"
    a, b = SQLiteStore(path), SQLiteStore(path)
    try:
        a.create_identity("x", _vecs(1), ["#0"])
        before = _snapshot(path)
        with pytest.raises(DuplicateIdentityError) as err:
            b.create_identity("x", _vecs(2), ["#0", "#1"], metadata={"k": 1})
        assert err.value.details["identity_id"] == "x"
        assert "add templates to it instead" in err.value.message and "add_faces" not in err.value.message
        assert _snapshot(path) == before
    finally:
        a.close()
        b.close()


def test_writes_on_missing_ids_raise_and_change_nothing(store: SQLiteStore, tmp_path: Path) -> None:
    store.create_identity("alice", _vecs(1), ["#0"])
    before = _snapshot(tmp_path / "gallery.sqlite3")
    with pytest.raises(IdentityNotFoundError):
        store.add_templates("nobody", _vecs(1), ["#0"])
    with pytest.raises(IdentityNotFoundError):
        store.delete_identity("nobody")
    with pytest.raises(IdentityNotFoundError):
        store.set_metadata("nobody", {"a": 1})
    with pytest.raises(TemplateNotFoundError):
        store.delete_template(10**6)
    with pytest.raises(InvalidArgumentError):
        store.set_metadata("alice", {"x": object()})
    with pytest.raises(InvalidArgumentError):
        store.create_identity("carol", _vecs(2), ["only one source"])
    assert _snapshot(tmp_path / "gallery.sqlite3") == before


def test_delete_identity_template_and_set_metadata(store: SQLiteStore) -> None:
    a = store.create_identity("alice", _vecs(3), ["#0", "#1", "#2"])
    store.create_identity("bob", _vecs(1, 1), ["#0"])
    assert store.delete_template(a.template_ids[2]) == "alice"
    assert store.get_identity("alice").template_ids == a.template_ids[:2]  # type: ignore[union-attr]
    # AUTOINCREMENT: the deleted (largest) id is never handed out again
    again = store.add_templates("alice", _vecs(1, 2), ["#3"])
    assert again.template_ids[0] > a.template_ids[2]
    info = store.set_metadata("alice", {"team": "blue"})
    assert info.identity_id == "alice" and info.metadata == {"team": "blue"} and info.updated_at >= info.created_at
    gone = store.delete_identity("alice")
    assert gone.template_ids == (*a.template_ids[:2], *again.template_ids) and gone.metadata == {"team": "blue"}
    assert store.get_identity("alice") is None and store.counts() == (1, 1)  # its templates cascaded
    assert [i.identity_id for i in store.list_identities(None, 10)] == ["bob"]


ABORT_ON_BOOM = (
    "CREATE TRIGGER boom BEFORE INSERT ON templates WHEN NEW.source = 'boom' BEGIN SELECT RAISE(ABORT, 'x'); END"
)
FAILING_WRITES = {
    "create_identity": (
        ABORT_ON_BOOM,
        lambda s: s.create_identity("carol", _vecs(2, 5), ["ok", "boom"], metadata={"a": 1}),
    ),
    "add_templates": (
        ABORT_ON_BOOM,
        lambda s: s.add_templates("alice", _vecs(3, 6), ["ok", "ok", "boom"]),
    ),
    "delete_identity": (
        "CREATE TRIGGER boom BEFORE DELETE ON templates WHEN OLD.source = 'keep' BEGIN SELECT RAISE(ABORT, 'x'); END",
        lambda s: s.delete_identity("alice"),
    ),
    "delete_template": (
        "CREATE TRIGGER boom AFTER DELETE ON templates BEGIN SELECT RAISE(ABORT, 'boom'); END",
        lambda s: s.delete_template(s.get_identity("alice").template_ids[0]),
    ),
    "set_metadata": (
        "CREATE TRIGGER boom AFTER UPDATE OF metadata ON identities BEGIN SELECT RAISE(ABORT, 'boom'); END",
        lambda s: s.set_metadata("alice", {"team": "blue"}),
    ),
}


@pytest.mark.parametrize("method", list(FAILING_WRITES))
def test_a_write_failing_midway_leaves_the_database_unchanged(method: str, tmp_path: Path) -> None:
    path = tmp_path / "gallery.sqlite3"
    store = SQLiteStore(path)
    try:
        store.create_identity("alice", _vecs(2), ["first", "keep"], metadata={"team": "red"})
        trigger, write = FAILING_WRITES[method]
        _trigger(path, trigger)
        before = _snapshot(path)
        with pytest.raises(sqlite3.DatabaseError):
            write(store)
        assert _snapshot(path) == before
        store.create_identity("dave", _vecs(1, 7), ["fine"])  # the store is still usable: no open transaction
        assert store.counts() == (2, 3)
    finally:
        store.close()


# ---- identity ids: one rule for the SDK, the CLI and the server ---------------------------------
REFUSED = {
    "empty": "",
    "whitespace only": " \t ",
    "ideographic space only": "\u3000",
    "too long": "x" * (MAX_IDENTITY_LEN + 1),
    "dot": ".",
    "dot dot": "..",
    "slash": "team/alice",
    "NUL": "a\x00b",
    "tab": "tab\there",
    "newline": "a\nb",
    "DEL": "a\x7fb",
    "NEL U+0085": "a\u0085b",
    "zero-width space U+200B": "ali\u200bce",
    "zero-width joiner U+200D": "a\u200db",
    "BOM U+FEFF": "\ufeffalice",
    "bidi override U+202E": "alice\u202egnp.exe",
    "bidi isolate U+2066": "a\u2066b",
    "left-to-right mark U+200E": "a\u200eb",
    "soft hyphen U+00AD": "a\u00adb",
    "line separator U+2028": "a\u2028b",
    "paragraph separator U+2029": "a\u2029b",
}
ALLOWED = ["alice", "Zoë Saldaña", "李小龙", "a.b", "...", ".hidden", "with spaces", "emoji 🙂", "x" * MAX_IDENTITY_LEN]


@pytest.mark.parametrize("bad", list(REFUSED.values()), ids=list(REFUSED))
def test_refused_identity_ids(bad: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_identity_id(bad)
    with Gallery(tmp_path / "ids.fmg") as g:
        g.enroll_embeddings("kept", _vecs(1), MODEL)
        with pytest.raises(InvalidArgumentError):
            g.enroll_embeddings(bad, _vecs(1), MODEL)
        for call in (g.get, g.delete, lambda i: g.set_metadata(i, {}), lambda i: g.check_enrollable(i, create=True)):
            with pytest.raises(InvalidArgumentError):
                call(bad)
        assert bad not in g and [i.identity_id for i in g.list_identities().items] == ["kept"]


@pytest.mark.parametrize("bad", [5, None, b"alice", ["alice"]])
def test_identity_ids_are_strings(bad: object) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_identity_id(bad)


@pytest.mark.parametrize("good", ALLOWED)
def test_allowed_identity_ids(good: str) -> None:
    assert validate_identity_id(good) == good


def test_identity_ids_are_nfc(tmp_path: Path) -> None:
    decomposed, precomposed = "Zoe\u0301 Salda\u0301na", "Zo\u00e9 Sald\u00e1na"
    assert decomposed != precomposed and unicodedata.normalize("NFC", decomposed) == precomposed
    assert validate_identity_id(decomposed) == precomposed
    assert validate_identity_id("e\u0301" * MAX_IDENTITY_LEN) == "\u00e9" * MAX_IDENTITY_LEN  # length after NFC
    probe = _vecs(1, 3)
    with Gallery(tmp_path / "nfc.fmg") as g:
        report = g.enroll_embeddings(decomposed, probe, MODEL)
        assert report.identity_id == precomposed
        assert precomposed in g and decomposed in g
        assert g.get(precomposed).identity_id == precomposed == g.get(decomposed).identity_id
        with pytest.raises(DuplicateIdentityError):
            g.enroll_embeddings(precomposed, probe, MODEL)
        assert g.add_embeddings(precomposed, _vecs(1, 4), MODEL).identity_id == precomposed
        assert [i.identity_id for i in g.list_identities().items] == [precomposed]
        assert g.identify_embeddings(probe, MODEL, threshold=0.5)[0].identity_id == precomposed
        assert g.set_metadata(decomposed, {"n": 1}).metadata == {"n": 1}
        assert g.delete(decomposed).num_templates == 2 and precomposed not in g


def test_writes_do_not_checkpoint_inline_and_the_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """Enrolment never pays a WAL checkpoint (SQLite's automatic one is pushed far out), yet the
    background thread copies the WAL back into the database file soon after the writes."""
    import os
    import time

    from facematch.gallery import sqlite_store

    rng = np.random.default_rng(0)
    db = tmp_path / "g.fmg" / "gallery.sqlite3"
    with Gallery(tmp_path / "g.fmg") as g:
        conn = g._store._conn  # type: ignore[attr-defined]
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == sqlite_store.BACKSTOP_PAGES
        for i in range(600):  # ~4,000 WAL pages: SQLite's default would checkpoint inline 4 times
            g.enroll_embeddings(f"p{i}", unit(rng.standard_normal((4, DIM))), MODEL)
        deadline = time.monotonic() + 10
        while os.path.getsize(db) < 1_000_000:  # 2,400 templates: ~1.5 MB once checkpointed
            assert time.monotonic() < deadline, os.path.getsize(db)
            time.sleep(0.1)
    with Gallery(tmp_path / "g.fmg", read_only=True) as g:
        assert g.num_templates == 2400


def test_bulk_reads_do_not_hold_up_writes(tmp_path: Path) -> None:
    """Embedding reads (re-rank, a background retrain) run on their own read-only connection:
    a writer enrols while a reader is busy, and the reader then sees the committed write."""
    import threading
    import time

    rng = np.random.default_rng(1)
    with Gallery(tmp_path / "g.fmg") as g:
        g.enroll_embeddings("a", unit(rng.standard_normal((2, DIM))), MODEL)
        store = g._store  # type: ignore[attr-defined]
        assert store._reader is not store._conn  # type: ignore[attr-defined]
        busy, done = threading.Event(), threading.Event()

        def hold_reader() -> None:
            with store._reader_lock:  # type: ignore[attr-defined]  # a long read in progress
                busy.set()
                done.wait(10)

        t = threading.Thread(target=hold_reader)
        t.start()
        assert busy.wait(5)
        start = time.monotonic()
        g.enroll_embeddings("b", unit(rng.standard_normal((2, DIM))), MODEL)  # not blocked by the reader
        assert time.monotonic() - start < 5  # the reader holds its lock for 10 s
        done.set()
        t.join()
        tids, owners, _ = store.embeddings_of_identities([1, 2], DIM)
        assert sorted(owners.tolist()) == [1, 1, 2, 2] and tids.size == 4
