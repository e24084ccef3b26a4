"""Retraining off the enrolment path: the old index serves while a background thread builds the new
one from the store; writes made meanwhile reach it; a crash or close mid-retrain loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _gallery_util import DIM, MODEL, unit

from facematch.gallery import Gallery, IndexConfig
from facematch.gallery import config as config_module
from facematch.gallery import retrain as retrain_module
from facematch.gallery import sync as sync_module
from facematch.gallery.index import FaissIndex
from facematch.gallery.retrain import WriteLog
from facematch.gallery.sync import CHOICE_KEY

pytest.importorskip("faiss")

IVF = IndexConfig(kind="ivf", storage="sq8", rerank=True, min_train=400, nprobe=64)


def _templates(n: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, 2, DIM)))


@pytest.fixture()
def paused(monkeypatch):  # type: ignore[no-untyped-def]
    """Background rebuilds wait for ``release`` before they start building their index (in the
    retrain process, or in the thread)."""
    gate, started = threading.Event(), threading.Event()
    real = sync_module._Retrain._build

    def build(self):  # type: ignore[no-untyped-def]
        started.set()
        assert gate.wait(60), "test never released the retrain"
        return real(self)

    monkeypatch.setattr(sync_module._Retrain, "_build", build)
    return gate, started


@pytest.fixture()
def children(monkeypatch):  # type: ignore[no-untyped-def]
    """The retrains built in a child process (their new indexes)."""
    built: list[object] = []
    real = sync_module.build_in_child

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        new = real(*args, **kwargs)
        built.append(new)
        return new

    monkeypatch.setattr(sync_module, "build_in_child", spy)
    return built


@pytest.mark.parametrize("in_process", [False, True], ids=["child-process", "thread"])
def test_writes_during_a_background_retrain_reach_the_new_index(tmp_path, paused, children, in_process) -> None:  # type: ignore[no-untyped-def]
    gate, started = paused
    x = _templates(400, 1)
    with Gallery(tmp_path / "g.fmg", index=IVF, synchronous="NORMAL") as g:
        g._sync.retrain_process = not in_process
        for i in range(199):
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
        assert not g._sync.retraining
        t = time.perf_counter()
        g.enroll_embeddings("p199", x[199], MODEL)  # 400 templates: the mark; the retrain starts, paused
        assert started.wait(30) and g._sync.retraining
        assert time.perf_counter() - t < 5  # the crossing enrolment does not wait for the retrain
        assert "retraining in the background" in g.info().index and "exact until" in g.info().index
        for i in range(200, 260):  # writes while it is paused: added to the old index and logged
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
        gone = g.delete("p010").template_ids + g.delete("p250").template_ids
        g.remove_template(g.get("p011").template_ids[0])
        hits = g.identify_embeddings(x[255, :1], MODEL, threshold=0.9)  # the old index serves meanwhile
        assert hits[0].identity_id == "p255"
        gate.set()
        assert g.wait_for_retrain(60)
        assert not g._sync.retraining and "ivf/sq8" in g.info().index and "exact until" not in g.info().index
        assert children == ([] if in_process else [g._sync.index])  # the child's index is the one serving
        n_db, n_index = g.verify_consistency()
        assert n_db == n_index == 2 * 258 - 1
        probes = x[:260, 1]
        res = g.identify_embeddings(probes, MODEL, threshold=0.9)
        for i, r in enumerate(res):
            expected = None if i in (10, 250) else f"p{i:03d}"
            assert r.identity_id == expected, (i, r.identity_id)
        assert not set(gone) & {c.template_id for r in res for c in r.candidates}
        assert g.identify_embeddings(x[11, :1], MODEL, threshold=0.9)[0].identity_id is None  # its removed template
        choice = json.loads(g._store.get_meta(CHOICE_KEY))
        assert "ivf/sq8" in choice["live"] and choice["reason"].startswith("explicit")


def test_inline_retrain_is_still_available_and_blocks_the_crossing_write(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = _templates(210, 2)
    with Gallery(tmp_path / "g.fmg", index=IVF, synchronous="NORMAL") as g:
        g._sync.background_retrain = False  # the old behaviour, for before/after measurements
        for i in range(200):
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
        assert not g._sync.retraining and "exact until" not in g.info().index  # trained inline at 400
        assert g.verify_consistency() == (400, 400)


def test_close_mid_retrain_then_reopen(tmp_path, paused) -> None:  # type: ignore[no-untyped-def]
    gate, started = paused
    x = _templates(230, 3)
    path = tmp_path / "g.fmg"
    g = Gallery(path, index=IVF, synchronous="NORMAL")
    for i in range(220):
        g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
    assert started.wait(30)
    t = time.perf_counter()
    g.close()  # does not wait for the (paused) retrain
    assert time.perf_counter() - t < 5
    gate.set()
    with Gallery(path, index=IVF) as g2:
        assert g2.verify_consistency() == (440, 440)
        assert g2.wait_for_retrain(60) and "exact until" not in g2.info().index
        res = g2.identify_embeddings(x[:220, 1], MODEL, threshold=0.9)
        assert [r.identity_id for r in res] == [f"p{i:03d}" for i in range(220)]


CHILD = r"""
import sys, threading, time
import numpy as np
from facematch.gallery import Gallery, IndexConfig
from facematch.gallery import sync

def slow(self):
    sys.stdout.write("retraining\n")  # one write per line: two threads print
    sys.stdout.flush()
    time.sleep(3600)  # killed in here
sync._Retrain._build = slow

rng = np.random.default_rng(7)
x = rng.standard_normal((5000, 2, 128)).astype(np.float32)
x /= np.linalg.norm(x, axis=2, keepdims=True)
cfg = IndexConfig(kind="ivf", storage="sq8", rerank=True, min_train=400, nprobe=64)
g = Gallery(sys.argv[1], index=cfg, synchronous="FULL")
print("ready", flush=True)
i = 0
while True:
    g.enroll_embeddings(f"id{i:05d}", x[i], "synthetic-128")
    sys.stdout.write(f"ack {i}\n")
    sys.stdout.flush()
    i += 1
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_sigkill_mid_retrain_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "crash.fmg"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, bufsize=1)
    acked: list[int] = []
    saw_retrain = False
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(acked) < 300:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("retraining"):
                saw_retrain = True
            elif line.startswith("ack "):
                acked.append(int(line.split()[1]))
        os.kill(proc.pid, signal.SIGKILL)  # the retrain thread is asleep inside its rebuild
        acked += [int(ln.split()[1]) for ln in proc.stdout.read().splitlines() if ln.startswith("ack ")]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert saw_retrain and len(acked) >= 300
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5000, 2, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    with Gallery(path, index=IVF, synchronous="NORMAL") as g:
        n_db, n_index = g.verify_consistency()
        assert n_db == n_index >= 2 * len(acked)
        assert g.wait_for_retrain(60) and "exact until" not in g.info().index
        res = g.identify_embeddings(x[acked, 1], MODEL, threshold=0.9)
        assert [r.identity_id for r in res] == [f"id{i:05d}" for i in acked]


def test_auto_gallery_switches_to_ivf_in_the_background_and_records_why(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(config_module, "AUTO_FLAT_MAX", 500)
    x = _templates(300, 5)
    path = tmp_path / "auto.fmg"
    with Gallery(path, synchronous="NORMAL") as g:
        assert g.index_config.kind == "auto"
        for i in range(240):
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
        assert "exact until 500" in g.info().index
        for i in range(240, 300):
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
        assert g.wait_for_retrain(60)
        info = g.info().index
        assert "ivf/pq32x4" in info and "rerank" in info and info.endswith("[auto]"), info
        res = g.identify_embeddings(x[:, 1], MODEL, threshold=0.9)
        assert [r.identity_id for r in res] == [f"p{i:03d}" for i in range(300)]
    with Gallery(path) as g:  # reopened without an index: the stored policy, the saved IVF index
        assert g.index_config.kind == "auto" and "ivf/pq32x4" in g.info().index
        choice = json.loads(g._store.get_meta(CHOICE_KEY))
        assert choice["policy"] == "auto" and "ivf/pq32x4" in choice["live"] and choice["templates"] >= 500
        assert "500" in choice["reason"]
    with Gallery(path, index=IndexConfig()) as g:  # an explicit configuration wins (and is stored)
        assert g.info().index.startswith("faiss:flat/fp32") and g.verify_consistency() == (600, 600)
        assert json.loads(g._store.get_meta(CHOICE_KEY))["reason"].startswith("explicit")
    with Gallery(path) as g:
        assert g.index_config == IndexConfig()


def test_existing_flat_gallery_keeps_its_index(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "old.fmg"
    x = _templates(20, 6)
    with Gallery(path, index=IndexConfig()) as g:  # what every gallery written before "auto" stored
        for i in range(20):
            g.enroll_embeddings(f"p{i:02d}", x[i], MODEL)
    with Gallery(path) as g:
        assert g.index_config.kind == "flat" and g.info().index == "faiss:flat/fp32@cpu"
        assert g.identify_embeddings(x[3, 1], MODEL, threshold=0.9)[0].identity_id == "p03"


def test_a_retrain_process_that_cannot_start_falls_back_to_the_thread(tmp_path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    x = _templates(260, 8)
    with Gallery(tmp_path / "g.fmg", index=IVF, synchronous="NORMAL") as g:
        for i in range(260):
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
        assert g.wait_for_retrain(60) and "exact until" not in g.info().index
        assert g.verify_consistency() == (520, 520)
        res = g.identify_embeddings(x[:, 1], MODEL, threshold=0.9)
    assert [r.identity_id for r in res] == [f"p{i:03d}" for i in range(260)]
    assert "could not start the retrain process" in caplog.text and "in this process instead" in caplog.text


def test_a_failing_retrain_process_reports_its_error_and_the_thread_builds(tmp_path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    from facematch.gallery import retrain

    real = retrain.build_in_child

    def broken_db(db_path, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real(tmp_path / "missing" / "gallery.sqlite3", *args, **kwargs)

    monkeypatch.setattr(sync_module, "build_in_child", broken_db)
    x = _templates(210, 9)
    with Gallery(tmp_path / "g.fmg", index=IVF, synchronous="NORMAL") as g:
        for i in range(210):
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
        assert g.wait_for_retrain(60) and "exact until" not in g.info().index
        assert g.verify_consistency() == (420, 420)
    assert "the retrain process exited with" in caplog.text and "in this process instead" in caplog.text


def test_replayed_log_equals_the_writes_applied_one_by_one(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(retrain_module, "REPLAY_CHUNK", 5)  # chunk boundaries inside runs of adds
    rng = np.random.default_rng(13)
    x = unit(rng.standard_normal((400, DIM)))
    log = WriteLog(DIM, tmp_path)
    live: set[int] = set()
    next_id = 0
    for _ in range(120):
        if live and rng.random() < 0.3:
            gone = rng.choice(sorted(live), min(len(live), int(rng.integers(1, 4))), replace=False)
            log.remove(np.asarray(gone, np.int64))
            live -= set(gone.tolist())
        else:
            ids = np.arange(next_id, next_id + int(rng.integers(1, 4)), dtype=np.int64)
            next_id = int(ids[-1]) + 1
            log.add(ids, x[ids])
            live |= set(ids.tolist())
    # the embeddings are in the (unlinked) file, not in the process: 4 bytes a value
    assert log.templates == next_id and os.fstat(log._file.fileno()).st_size == next_id * DIM * 4
    assert list(tmp_path.iterdir()) == []  # nothing left on disk by name
    replayed = FaissIndex(DIM, IndexConfig(device="cpu"))
    half = len(log) // 2  # in two calls, as the retrain thread does while writes go on
    log.replay(replayed, 0, half)
    log.replay(replayed, half, len(log))
    log.close()
    assert replayed.ids().tolist() == sorted(live)
    s, i = replayed.search(x[:next_id], 1)
    for row, t in enumerate(range(next_id)):
        if t in live:
            assert i[row, 0] == t and s[row, 0] == pytest.approx(1.0, abs=1e-5)


def test_a_write_log_that_fails_drops_the_retrain_never_the_write(tmp_path, paused, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    gate, started = paused
    x = _templates(400, 21)
    with Gallery(tmp_path / "g.fmg", index=IVF, synchronous="NORMAL") as g:
        for i in range(200):  # the 200th crosses the mark: a retrain starts (paused)
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
        assert started.wait(30) and g._sync.retraining

        def full(self, ids, vectors):  # type: ignore[no-untyped-def]
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(WriteLog, "add", full)
        g.enroll_embeddings("p200", x[200], MODEL)  # acknowledged, in the store and the old index
        assert not g._sync.retraining and "write log failed" in caplog.text
        gate.set()
        assert g.verify_consistency() == (402, 402)
        assert g.identify_embeddings(x[200, 1:], MODEL, threshold=0.9)[0].identity_id == "p200"
    with Gallery(tmp_path / "g.fmg", synchronous="NORMAL") as g:  # reopened: everything there
        assert g.verify_consistency() == (402, 402)


def test_no_temporary_file_for_the_write_log_postpones_the_retrain(tmp_path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    real = WriteLog.__init__

    def refuse(self, dim, dir=None):  # type: ignore[no-untyped-def]
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(WriteLog, "__init__", refuse)
    x = _templates(210, 22)
    with Gallery(tmp_path / "g.fmg", index=IVF, synchronous="NORMAL") as g:
        for i in range(205):
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
        assert not g._sync.retraining and "exact until" in g.info().index  # still the exact index, serving
        assert "background retrain not started" in caplog.text
        assert g.identify_embeddings(x[204, 1:], MODEL, threshold=0.9)[0].identity_id == "p204"
        monkeypatch.setattr(WriteLog, "__init__", real)
        g._sync._retry_at = 0.0  # the back-off over: the next write past the mark retrains
        g.enroll_embeddings("p205", x[205], MODEL)
        assert g.wait_for_retrain(60) and "exact until" not in g.info().index
        assert g.verify_consistency() == (412, 412)


def test_wait_for_retrain_waits_for_a_retrain_the_swap_starts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = IndexConfig(kind="ivf", min_train=200, nprobe=16, rerank=True)
    x = _templates(400, 10)
    with Gallery(tmp_path / "g.fmg", index=cfg, synchronous="NORMAL") as g:
        for i in range(400):  # faster than a retrain process starts: the first retrain (at 200
            g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)  # templates) lands after the loop
        assert g.wait_for_retrain(120)
        # the swap found the gallery grown past the next mark and started another retrain:
        # waited for too, so the index is the one for 800 templates, and none is running
        assert not g._sync.retraining and g._index._nlist == cfg.nlist_for(800)  # type: ignore[union-attr]
