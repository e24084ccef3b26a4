"""Gallery index benchmark on synthetic unit vectors (d=512).

For each gallery size N and index type: build time, bytes per template (in memory and
on disk), p50/p99 search latency for 1 probe and for batches of 64, and recall@1
against exact search. Probes are noisy copies (cosine 0.5) of random gallery vectors,
like a genuine face probe; the exact flat index gives the reference answer.
A full ``Gallery`` (SQLite + index + per-identity aggregation) is also timed at the
smallest N to show the end-to-end overhead and the database's bytes per template.

    python benchmarks/bench_gallery.py --sizes 10000 100000 --out benchmarks/gallery_results.md
    python benchmarks/bench_gallery.py --sizes 1000000 --configs flat/fp16 "ivf/fp32 nprobe=16" --nlist 1024
    python benchmarks/bench_gallery.py --device gpu      # FAISS-GPU mirror (flat and IVF kinds; needs faiss-gpu)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from facematch.gallery import Gallery, IndexConfig
from facematch.gallery.index import INDEX_FILE, FaissIndex, gpu_available, import_faiss

D = 512

CONFIGS = {
    "flat/fp32": IndexConfig(device="cpu"),
    "flat/fp16": IndexConfig(storage="fp16", device="cpu"),
    "flat/sq8": IndexConfig(storage="sq8", device="cpu", min_train=1),
    "ivf/fp32 nprobe=16": IndexConfig(kind="ivf", nprobe=16, device="cpu", min_train=1),
    "ivf/sq8 nprobe=64": IndexConfig(kind="ivf", storage="sq8", nprobe=64, device="cpu", min_train=1),
    "hnsw/fp32 M=32 efS=64": IndexConfig(kind="hnsw", device="cpu"),
    "hnsw/sq8 M=16 efC=40 efS=64": IndexConfig(
        kind="hnsw", storage="sq8", hnsw_m=16, ef_construction=40, device="cpu", min_train=1
    ),
}
SMALL_AT_1M = ("flat/fp32", "flat/sq8", "hnsw/sq8 M=16 efC=40 efS=64")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(n: int, n_q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.empty((n, D), np.float32)
    for i in range(0, n, 100_000):  # chunked to bound the float64 temporaries
        x[i : i + 100_000] = unit(rng.standard_normal((min(100_000, n - i), D)).astype(np.float32))
    src = rng.choice(n, n_q, replace=False)
    q = unit(0.5 * x[src] + math.sqrt(0.75) * unit(rng.standard_normal((n_q, D)).astype(np.float32)))
    return x, q


def latency(fn, reps: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for i in range(reps):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    a = np.asarray(times) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_index(name: str, cfg: IndexConfig, x: np.ndarray, q: np.ndarray, exact: np.ndarray | None, reps: int):  # type: ignore[no-untyped-def]
    ids = np.arange(x.shape[0], dtype=np.int64) + 1
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        index = FaissIndex(D, cfg, Path(tmp))
        index.rebuild(ids, x)
        build = time.perf_counter() - t
        index.save()
        disk = os.path.getsize(Path(tmp) / INDEX_FILE)
    mem = index.memory_bytes()
    p1 = latency(lambda i: index.search(q[i % len(q)][None], 10), reps)
    p64 = latency(lambda i: index.search(q[(i * 64) % (len(q) - 64) :][:64], 10), max(5, reps // 8))
    _, got = index.search(q, 1)
    recall = 1.0 if exact is None else float(np.mean(got[:, 0] == exact))
    return got[:, 0], {
        "index": name,
        "build_s": build,
        "mem_B": mem / x.shape[0],
        "disk_B": disk / x.shape[0],
        "p50_1": p1[0],
        "p99_1": p1[1],
        "p50_64": p64[0],
        "p99_64": p64[1],
        "recall": recall,
    }


def bench_gallery(x: np.ndarray, q: np.ndarray, reps: int) -> dict[str, float]:
    per = 4  # templates per identity
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.fmg"
        g = Gallery(path)
        t = time.perf_counter()
        for i in range(0, x.shape[0], per):
            g.enroll_embeddings(f"id{i // per:07d}", x[i : i + per], "bench-512")
        enroll = (time.perf_counter() - t) / (x.shape[0] / per)
        g.save()
        db = sum(os.path.getsize(p) for p in path.glob("gallery.sqlite3*"))
        p1 = latency(lambda i: g.identify_embeddings(q[i % len(q)][None], "bench-512", threshold=0.3), reps)
        p64 = latency(
            lambda i: g.identify_embeddings(q[(i * 64) % (len(q) - 64) :][:64], "bench-512", threshold=0.3),
            max(5, reps // 8),
        )
        g.close()
    return {
        "enroll_ms": enroll * 1e3,
        "db_B": db / x.shape[0],
        "p50_1": p1[0],
        "p99_1": p1[1],
        "p50_64": p64[0],
        "p99_64": p64[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None, help="index types to run")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu: search on the FAISS-GPU mirror")
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default: min(4 sqrt N, N/39))")
    ap.add_argument("--no-gallery", action="store_true", help="skip the full-Gallery timing")
    args = ap.parse_args()
    faiss = import_faiss()
    if args.device == "gpu" and not gpu_available(faiss):
        ap.error("--device gpu needs a FAISS build with GPU support and a visible GPU")
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs "
        f"while measuring), FAISS {faiss.__version__}, GPU: {'yes' if gpu_available(faiss) else 'none'}.",
        "Latency = index search for top-10 templates (ms); recall@1 vs exact flat search; "
        "probes at cosine 0.5 to a random gallery vector.",
        "",
    ]
    for n in args.sizes:
        x, q = make_data(n, args.queries)
        reps = args.reps if n < 1_000_000 else max(20, args.reps // 5)
        lines += [
            f"### N = {n:,}",
            "",
            "| index | build s | B/template mem | B/template disk | p50 1 | p99 1 | p50 64 | p99 64 | recall@1 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        chosen = args.configs or [c for c in CONFIGS if n < 1_000_000 or c in SMALL_AT_1M]
        exact = None
        if "flat/fp32" not in chosen:  # the reference answer still comes from exact search
            ref = FaissIndex(D, CONFIGS["flat/fp32"])
            ref.rebuild(np.arange(n, dtype=np.int64) + 1, x)
            exact = ref.search(q, 1)[1][:, 0]
            del ref
        for name in chosen:
            cfg = CONFIGS[name]
            if args.device == "gpu":
                if cfg.kind == "hnsw":
                    print(f"N={n} {name}: FAISS-GPU has no HNSW; skipped", flush=True)
                    continue
                cfg = replace(cfg, device="gpu")
            if args.nlist is not None and cfg.kind == "ivf":
                cfg = replace(cfg, nlist=args.nlist)
                name = f"{name} nlist={args.nlist}"
            got, r = bench_index(name + (" @gpu" if args.device == "gpu" else ""), cfg, x, q, exact, reps)
            if exact is None:
                exact = got
            row = (
                f"| {r['index']} | {r['build_s']:.2f} | {r['mem_B']:.0f} | {r['disk_B']:.0f} | {r['p50_1']:.2f} | "
                f"{r['p99_1']:.2f} | {r['p50_64']:.2f} | {r['p99_64']:.2f} | {r['recall']:.3f} |"
            )
            print(f"N={n} {row}", flush=True)
            lines.append(row)
        lines.append("")
        if n == min(args.sizes) and not args.no_gallery:
            r = bench_gallery(x, q, args.reps)
            lines += [
                f"Full Gallery at N = {n:,} (flat/fp32, 4 templates per identity, SQLite synchronous=FULL): "
                f"enrol {r['enroll_ms']:.2f} ms per identity, database {r['db_B']:.0f} B/template; identify "
                f"(search + aggregation + metadata) p50/p99 {r['p50_1']:.2f}/{r['p99_1']:.2f} ms for 1 probe, "
                f"{r['p50_64']:.2f}/{r['p99_64']:.2f} ms per batch of 64.",
                "",
            ]
            print(lines[-2], flush=True)
        del x, q
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
