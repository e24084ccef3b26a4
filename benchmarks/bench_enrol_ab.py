"""Enrolment latency A/B tests on an existing IVF gallery, side by side in one run (issue 18).

    python benchmarks/bench_enrol_ab.py retrain GALLERY [--rounds 2]
        a background retrain forced again and again, alternately built in a thread and in a
        child process (``IndexSync.retrain_process``), enrolling all the while: p50/p99 of the
        enrolments during each retrain and of 2,000 between them.
    python benchmarks/bench_enrol_ab.py add-threads GALLERY [--blocks 24]
        blocks of 500 enrolments alternating between the per-call FAISS thread rule (one thread
        for an enrolment's add) and FAISS's own setting (every core).

Both write to GALLERY (random unit templates under new names): use a copy, e.g. of the
60k-template gallery that ``bench_gallery_scale.py gallery --size 60000`` leaves in its cache.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np

from facematch.gallery import Gallery
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("retrain")
    r.add_argument("gallery")
    r.add_argument("--rounds", type=int, default=2)
    a = sub.add_parser("add-threads")
    a.add_argument("gallery")
    a.add_argument("--blocks", type=int, default=24)
    args = ap.parse_args()
    {"retrain": cmd_retrain, "add-threads": cmd_add_threads}[args.cmd](args)


if __name__ == "__main__":
    main()
