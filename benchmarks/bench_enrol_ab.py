"""Enrolment latency A/B tests on an existing IVF gallery, side by side in one run (issue 18).

    python benchmarks/bench_enrol_ab.py retrain GALLERY [--rounds 2]
        a background retrain forced again and again, alternately built in a thread and in a
        child process (``IndexSync.retrain_process``), enrolling all the while: p50/p99 of the
        enrolments during each retrain and of 2,000 between them.
    python benchmarks/bench_enrol_ab.py add-threads GALLERY [--blocks 24]
        blocks of 500 enrolments alternating between the per-call FAISS thread rule (one thread
        for an enrolment's add) and FAISS's own setting (every core).

    python benchmarks/bench_enrol_ab.py trace [--size 1000000] [--synchronous FULL]
        the 1M bulk enrolment of ``bench_gallery_scale.py gallery`` traced call by call: store
        commit vs index add, which calls overlapped a background WAL checkpoint, a GC pass or a
        retrain, and the disk's own append + fdatasync latency measured before and after it (the
        floor a fsync'd commit cannot beat).

``retrain`` and ``add-threads`` write to GALLERY (random unit templates under new names): use a
copy, e.g. of the 60k-template gallery that ``bench_gallery_scale.py gallery --size 60000``
leaves in its cache.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sqlite3
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from facematch.gallery import Gallery, sqlite_store
from facematch.gallery import sync as sync_module

MODEL_ID = "w600k_mbf"


def _templates(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 4, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=2, keepdims=True)


def _summary(lat: list[float]) -> str:
    v = np.asarray(lat) * 1e3
    return f"p50 {np.median(v):.2f} p99 {np.percentile(v, 99):.2f} max {v.max():.1f} ms ({v.size} calls)"


def cmd_retrain(args: argparse.Namespace) -> None:
    x = _templates(60_000, 1)
    i = 0
    with Gallery(args.gallery, synchronous="FULL") as g:
        s = g._sync
        print(f"{g.info().index}, {len(s.owners):,} templates", flush=True)
        for mode in ["thread", "process"] * args.rounds:
            s.retrain_process = mode == "process"
            with g._lock:  # what _maybe_retrain does at a mark, forced
                job = sync_module._Retrain(s, s.owners.template_ids.copy())
                s._job = job
                job.start()
            lat: list[float] = []
            t0 = time.perf_counter()
            while s.retraining:
                t = time.perf_counter()
                g.enroll_embeddings(f"ab{i:07d}", x[i % x.shape[0]], MODEL_ID)
                lat.append(time.perf_counter() - t)
                i += 1
            took = time.perf_counter() - t0
            print(f"{mode}: retrain {took:.1f} s, {_summary(lat)}; load {os.getloadavg()[0]:.2f}", flush=True)
            lat = []
            for _ in range(2000):
                t = time.perf_counter()
                g.enroll_embeddings(f"ab{i:07d}", x[i % x.shape[0]], MODEL_ID)
                lat.append(time.perf_counter() - t)
                i += 1
            print(f"  between retrains: {_summary(lat)}", flush=True)


def cmd_add_threads(args: argparse.Namespace) -> None:
    x = _templates(500 * args.blocks, 0)
    lat: dict[int | None, list[float]] = {None: [], 0: []}
    with Gallery(args.gallery, synchronous="FULL") as g:
        print(g.info().index, flush=True)
        base = g._sync.config
        for block in range(args.blocks):
            threads = None if block % 2 == 0 else 0  # None: the per-call rule; 0: FAISS's own setting
            cfg = replace(base, search_threads=threads)
            g._sync.index.configure_search(cfg)  # type: ignore[attr-defined]
            g._sync.config = cfg
            for j in range(block * 500, block * 500 + 500):
                t = time.perf_counter()
                g.enroll_embeddings(f"th{j:07d}", x[j], MODEL_ID)
                lat[threads].append(time.perf_counter() - t)
    for threads, v in lat.items():
        label = "one thread (per-call rule)" if threads is None else "FAISS's own thread count"
        print(f"{label}: {_summary(v)}; load {os.getloadavg()[0]:.2f}")


def _pcts(v: np.ndarray) -> str:
    p50, p99 = float(np.median(v)), float(np.percentile(v, 99))
    return f"p50 {p50:.3f} p99 {p99:.3f} ms ({p99 / p50:.1f}x)"


def _disk_fsync(where: Path, n: int, record: int) -> np.ndarray:
    """``n`` appends of ``record`` bytes, each followed by fdatasync: what one fsync'd commit costs."""
    path = where / "fsync-probe.bin"
    buf = os.urandom(record)
    lat = np.zeros(n)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, buf, i * record)
            os.fdatasync(fd)
            lat[i] = time.perf_counter() - t
    finally:
        os.close(fd)
        path.unlink()
    return lat * 1e3


def _overlaps(starts: np.ndarray, ends: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Which calls [starts[i], ends[i]] (sorted, disjoint) overlap any of ``spans`` (rows of t0, t1)."""
    hit = np.zeros(starts.size, bool)
    for a, b in spans:
        hit[np.searchsorted(ends, a) : np.searchsorted(starts, b)] = True
    return hit


def cmd_trace(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_gallery_scale as scale  # the same synthetic gallery and cache

    checkpoints: list[tuple[float, float]] = []
    original = sqlite_store._Checkpointer._checkpoint
    shipped_interval = sqlite_store.CHECKPOINT_INTERVAL_S

    def timed_checkpoint(self: sqlite_store._Checkpointer, conn: sqlite3.Connection) -> None:
        t0 = time.perf_counter()
        original(self, conn)  # the shipped checkpoint, timed
        checkpoints.append((t0, time.perf_counter()))

    pauses: list[tuple[float, float]] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append((started.pop(), time.perf_counter()))

    model, _, _ = scale.synthetic_model()
    gal = scale.SyntheticGallery(model, args.size // 4, 4, seed=0)
    mm = scale.gallery_vectors(gal)
    where = scale.CACHE / f"trace-{args.size}.fmg"
    shutil.rmtree(where, ignore_errors=True)
    record = 5 * 4096 + 5 * 24  # one enrolment's WAL frames: ~5 pages of 4 KB and their headers
    disk_before = _disk_fsync(scale.CACHE, args.fsync_probes, record)
    n = gal.n_identities
    t0, t1, t2 = np.zeros(n), np.zeros(n), np.zeros(n)
    retraining = np.zeros(n, bool)
    sqlite_store._Checkpointer._checkpoint = timed_checkpoint  # type: ignore[method-assign]
    gc.callbacks.append(on_gc)
    try:
        with Gallery(where, synchronous=args.synchronous) as g:
            create = g._store.create_identity
            committed = [0.0]

            def timed_create(*a: object, **k: object) -> object:
                out = create(*a, **k)  # type: ignore[arg-type]
                committed[0] = time.perf_counter()
                return out

            g._store.create_identity = timed_create  # type: ignore[method-assign]
            for i in range(n):
                if i % args.block == 0:  # the checkpoint interval arms alternate in blocks of calls
                    sqlite_store.CHECKPOINT_INTERVAL_S = args.intervals[(i // args.block) % len(args.intervals)]
                x = np.asarray(mm[i * 4 : (i + 1) * 4])
                t0[i] = time.perf_counter()
                g.enroll_embeddings(f"id{i:07d}", x, MODEL_ID)
                t2[i] = time.perf_counter()
                t1[i] = committed[0]
                retraining[i] = g._sync.retraining
            g.wait_for_retrain()
    finally:
        sqlite_store.CHECKPOINT_INTERVAL_S = shipped_interval
        sqlite_store._Checkpointer._checkpoint = original  # type: ignore[method-assign]
        gc.callbacks.remove(on_gc)
        shutil.rmtree(where, ignore_errors=True)
    disk_after = _disk_fsync(scale.CACHE, args.fsync_probes, record)
    lat, store, index = (t2 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3
    slow = lat > np.percentile(lat, 99)
    print(f"{args.size:,} templates in {n:,} calls, synchronous={args.synchronous}; load {os.getloadavg()[0]:.2f}")
    print(f"  enrolment {_pcts(lat)}; store commit {_pcts(store)}; index add {_pcts(index)}")
    print(f"  the calls above p99 spent {store[slow].sum() / lat[slow].sum():.0%} of their time in the store commit")
    print(f"  disk append {record:,} B + fdatasync, before: {_pcts(disk_before)}; after: {_pcts(disk_after)}")
    spans = np.asarray(checkpoints).reshape(-1, 2)
    ck_ms = (spans[:, 1] - spans[:, 0]) * 1e3 if len(spans) else np.zeros(1)
    print(f"  {len(spans)} checkpoints: p50 {np.median(ck_ms):.1f} ms, max {ck_ms.max():.0f} ms")
    inside_ck = _overlaps(t0, t2, spans)
    inside_gc = _overlaps(t0, t2, np.asarray(pauses).reshape(-1, 2))
    for name, m in [("a checkpoint", inside_ck), ("a GC pass", inside_gc), ("a retrain", retraining)]:
        inside = f"{_pcts(lat[m])}" if m.sum() > 100 else f"{int(m.sum())} calls"
        print(
            f"  during {name}: {m.mean():.1%} of the calls, {m[slow].mean():.0%} of those above p99; "
            f"inside {inside}, outside {_pcts(lat[~m])}"
        )
    quiet = ~(inside_ck | inside_gc | retraining)
    print(f"  outside all three: {_pcts(lat[quiet])}")
    if len(args.intervals) > 1:
        arm = (np.arange(n) // args.block) % len(args.intervals)
        for a, interval in enumerate(args.intervals):
            m = arm == a
            print(f"  checkpoint every {interval} s ({int(m.sum()):,} calls): {_pcts(lat[m])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("retrain")
    r.add_argument("gallery")
    r.add_argument("--rounds", type=int, default=2)
    a = sub.add_parser("add-threads")
    a.add_argument("gallery")
    a.add_argument("--blocks", type=int, default=24)
    t = sub.add_parser("trace")
    t.add_argument("--size", type=int, default=1_000_000)
    t.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    t.add_argument("--fsync-probes", type=int, default=10_000)
    t.add_argument(
        "--intervals",
        type=float,
        nargs="+",
        default=[sqlite_store.CHECKPOINT_INTERVAL_S],
        help="background checkpoint intervals (s), alternated in blocks of calls: an A/B in one run",
    )
    t.add_argument("--block", type=int, default=10_000, help="calls per interval block")
    args = ap.parse_args()
    {"retrain": cmd_retrain, "add-threads": cmd_add_threads, "trace": cmd_trace}[args.cmd](args)


if __name__ == "__main__":
    main()
