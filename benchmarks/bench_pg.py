"""PostgreSQL gallery benchmark: the shared store against the embedded SQLite one, and replica catch-up.

1. **Latency, side by side.** Two galleries hold the same synthetic 512-D templates, one in
   SQLite (``synchronous=FULL``), one in PostgreSQL (a throwaway local server, default
   ``synchronous_commit=on``, fsync on). Enrolments (one identity, 2 templates), single-probe
   identifications and deletions alternate between them call by call; p50/p99 of each.
   Then concurrent enrolment throughput with several threads per gallery.
2. **Catch-up.** The PostgreSQL gallery is filled to each size (``--sizes``, default 100k
   and 1M templates); a new replica's ``Gallery.open`` (build its FAISS index from the
   store) is timed, split into its parts, with the process's peak RSS; and a running
   replica's time to follow a burst of enrolments made by another.

    python benchmarks/bench_pg.py                          # the README's numbers
    python benchmarks/bench_pg.py --sizes 100000 --enrolments 300 --out /tmp/pg.md

The PostgreSQL server comes from tests/_pg_util.py (``initdb`` + ``pg_ctl`` in a temporary
directory, 127.0.0.1); it runs on the same cores as the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _pg_util import PgCluster

from facematch.gallery import Gallery
from facematch.gallery.postgres_store import PostgresStore

D = 512
MODEL = "synthetic-512"
PER_IDENTITY = 20  # templates per identity while filling for the catch-up runs


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def pct(times: list[float]) -> tuple[float, float]:
    a = np.asarray(times) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def fill(g: Gallery, start: int, n_identities: int, per: int, rng: np.random.Generator, threads: int = 1) -> None:
    """Enrol ``n_identities`` identities of ``per`` random templates each (several threads for PostgreSQL)."""

    def work(lo: int, hi: int, seed: int) -> None:
        r = np.random.default_rng(seed)
        for i in range(lo, hi):
            g.enroll_embeddings(f"id{start + i:08d}", unit(r.standard_normal((per, D)).astype(np.float32)), MODEL)

    step = -(-n_identities // threads)
    seeds = rng.integers(0, 2**31, threads)
    with ThreadPoolExecutor(threads) as pool:
        list(
            pool.map(
                lambda j: work(j * step, min(n_identities, (j + 1) * step), int(seeds[j])),
                range(threads),
            )
        )


def latency_side_by_side(uri: str, tmp: Path, base: int, n: int, lines: list[str]) -> None:
    rng = np.random.default_rng(0)
    galleries = {
        "SQLite (FULL)": Gallery.open(tmp / "side.fmg", synchronous="FULL"),
        "PostgreSQL": Gallery.open(uri),
    }
    t = time.perf_counter()
    for g in galleries.values():
        fill(g, 0, base, 1, np.random.default_rng(1), threads=1)
    print(f"filled both galleries with {base} identities in {time.perf_counter() - t:.0f} s", flush=True)
    enrol: dict[str, list[float]] = {k: [] for k in galleries}
    ident: dict[str, list[float]] = {k: [] for k in galleries}
    delete: dict[str, list[float]] = {k: [] for k in galleries}
    names = list(galleries)
    for i in range(n):
        vecs = unit(rng.standard_normal((2, D)).astype(np.float32))
        probe = unit(vecs[:1] + 0.5 * unit(rng.standard_normal((1, D)).astype(np.float32)))
        order = names if i % 2 == 0 else names[::-1]
        for k in order:
            g = galleries[k]
            t = time.perf_counter()
            g.enroll_embeddings(f"new{i:06d}", vecs, MODEL)
            enrol[k].append(time.perf_counter() - t)
        for k in order:
            t = time.perf_counter()
            res = galleries[k].identify_embeddings(probe, MODEL, k=5, threshold=0.3)
            ident[k].append(time.perf_counter() - t)
            assert res[0].identity_id == f"new{i:06d}", (k, res[0])
        if i % 2:
            for k in order:
                t = time.perf_counter()
                galleries[k].delete(f"new{i:06d}")
                delete[k].append(time.perf_counter() - t)
    lines += [
        f"### Latency, side by side ({n} rounds, alternating; galleries of {base} identities + the new ones)",
        "",
        "| store | enrol p50 ms | enrol p99 ms | identify p50 ms | identify p99 ms | delete p50 ms | delete p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in names:
        e, s, d = pct(enrol[k]), pct(ident[k]), pct(delete[k])
        lines.append(f"| {k} | {e[0]:.2f} | {e[1]:.2f} | {s[0]:.2f} | {s[1]:.2f} | {d[0]:.2f} | {d[1]:.2f} |")
    ratio = np.median(enrol["PostgreSQL"]) / np.median(enrol["SQLite (FULL)"])
    ratio_i = np.median(ident["PostgreSQL"]) / np.median(ident["SQLite (FULL)"])
    lines += ["", f"PostgreSQL / SQLite, p50: enrol {ratio:.2f}x, identify {ratio_i:.2f}x.", ""]

    # concurrent enrolment throughput: SQLite has one writer (a lock); PostgreSQL takes them side by side
    lines += ["| store | threads | enrolments/s |", "|---|---:|---:|"]
    for threads in (1, 4):
        for k in names:
            g = galleries[k]
            count = 40 * threads
            t = time.perf_counter()
            fill(g, 10_000_000 + threads * 1000, count, 2, np.random.default_rng(threads), threads=threads)
            lines.append(f"| {k} | {threads} | {count / (time.perf_counter() - t):.0f} |")
    lines.append("")
    for g in galleries.values():
        g.close()


def replica_lag(uri: str, n: int, lines: list[str]) -> None:
    """Time from an acknowledged enrolment on one replica to its template being searchable on another."""
    rng = np.random.default_rng(9)
    poll_s = 1.0
    with (
        Gallery.open(uri) as a,
        Gallery.open(uri, poll_s=30.0) as notified,
        Gallery.open(uri, listen=False, poll_s=poll_s) as polled,
    ):
        lags: dict[str, list[float]] = {"LISTEN/NOTIFY": [], f"polling only, poll_s={poll_s:g}": []}
        for i in range(n):
            want = notified.num_templates + 1
            a.enroll_embeddings(f"lag{i:05d}", unit(rng.standard_normal((1, D)).astype(np.float32)), MODEL)
            t = time.perf_counter()
            seen: dict[str, float] = {}
            while len(seen) < 2:
                now = time.perf_counter() - t
                if "n" not in seen and notified.num_templates >= want:
                    seen["n"] = now
                if "p" not in seen and polled.num_templates >= want:
                    seen["p"] = now
                time.sleep(0.0005)
            lags["LISTEN/NOTIFY"].append(seen["n"])
            lags[f"polling only, poll_s={poll_s:g}"].append(seen["p"])
            time.sleep(float(rng.uniform(0, poll_s)))  # the next enrolment at a random moment of the poll cycle
    lines += [
        f"### Replica lag ({n} enrolments on one replica; when each is in another replica's index)",
        "",
        "| follower | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for k, v in lags.items():
        p50, p99 = pct(v)
        lines.append(f"| {k} | {p50:.1f} | {p99:.1f} | {max(v) * 1e3:.1f} |")
    lines.append("")


def fill_store(store: PostgresStore, start: int, n_identities: int, rng: np.random.Generator, threads: int) -> None:
    """``n_identities`` identities of PER_IDENTITY random templates each, straight through the store."""

    def work(lo: int, hi: int, seed: int) -> None:
        r = np.random.default_rng(seed)
        sources = [None] * PER_IDENTITY
        for i in range(lo, hi):
            store.create_identity(f"id{start + i:08d}", unit(r.standard_normal((PER_IDENTITY, D))), sources)

    step = -(-n_identities // threads)
    seeds = rng.integers(0, 2**31, threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda j: work(j * step, min(n_identities, (j + 1) * step), int(seeds[j])), range(threads)))


REPLICA = """
import json, resource, sys, time
from facematch.gallery import Gallery
t = time.perf_counter()
g = Gallery.open(sys.argv[1])
cold = time.perf_counter() - t
store = g._store
t = time.perf_counter(); store.template_owners(); owners = time.perf_counter() - t
t = time.perf_counter(); n = sum(p[0].size for p in store.iter_embeddings(g.dim)); reads = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({"cold": cold, "owners": owners, "reads": reads, "n": n, "templates": g.num_templates, "rss": rss}))
sys.stdout.flush()
want = g.num_templates + int(sys.argv[2])
while g.num_templates < want:
    time.sleep(0.001)
print("followed", flush=True)
g.close()
"""


def catch_up(cluster: PgCluster, sizes: list[int], lines: list[str]) -> None:
    lines += [
        f"### Catch-up of a new replica ({PER_IDENTITY} templates per identity, {D}-D fp32, flat FAISS)",
        "",
        "A new process opens the gallery (`Gallery.open(uri)`): it reads the log position, the",
        "template owners and every embedding (binary `COPY`), and builds its FAISS index. Then",
        f"another process writes a burst of 100 enrolments ({100 * PER_IDENTITY} templates) and the",
        "replica's time to hold all of them is taken (the burst's own write time included).",
        "",
        "| templates | cold open s | of which: owners s | embeddings (COPY) s | FAISS build etc. s | "
        "replica peak RSS MB | burst written s | burst followed s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    uri = cluster.uri(cluster.new_database("catchup"))
    rng = np.random.default_rng(5)
    store = PostgresStore(uri)
    store.set_meta({"model_id": MODEL, "dim": str(D), "backend": "faiss"})
    store.init_meta({"gallery_id": "0" * 32})
    have = 0
    for size in sizes:
        t = time.perf_counter()
        n_id = (size - have) // PER_IDENTITY
        fill_store(store, have // PER_IDENTITY, n_id, rng, threads=4)
        have += n_id * PER_IDENTITY
        print(f"filled to {have} templates in {time.perf_counter() - t:.0f} s", flush=True)
        cluster.psql("CHECKPOINT")
        child = subprocess.Popen(
            [sys.executable, "-c", REPLICA, uri, str(100 * PER_IDENTITY)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        got = json.loads(child.stdout.readline())
        assert got["templates"] == have == got["n"], got
        t = time.perf_counter()
        fill_store(store, 10_000_000 + have, 100, rng, threads=1)
        written = time.perf_counter() - t
        assert child.stdout.readline().strip() == "followed"
        followed = time.perf_counter() - t
        child.wait(timeout=60)
        have += 100 * PER_IDENTITY
        build = got["cold"] - got["owners"] - got["reads"]
        lines.append(
            f"| {got['templates']:,} | {got['cold']:.1f} | {got['owners']:.2f} | {got['reads']:.1f} | "
            f"{build:.1f} | {got['rss']:.0f} | {written:.2f} | {followed:.2f} |"
        )
        print(lines[-1], flush=True)
    store.close()
    lines.append("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--base", type=int, default=2000, help="identities in each gallery before the latency rounds")
    ap.add_argument("--enrolments", type=int, default=500, help="latency rounds")
    ap.add_argument("--lag", type=int, default=100, help="enrolments timed for the replica lag")
    ap.add_argument("--omp-threads", type=int, default=1, help="FAISS OpenMP threads (0: FAISS's default)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.omp_threads:
        from facematch.gallery.index import import_faiss

        import_faiss().omp_set_num_threads(args.omp_threads)

    cluster = PgCluster().start()
    lines = [
        "## PostgreSQL store (`python benchmarks/bench_pg.py`)",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; PostgreSQL "
        f"{cluster.psql('SHOW server_version')} on the same machine (127.0.0.1, fsync on, "
        f"synchronous_commit {cluster.psql('SHOW synchronous_commit')}). FAISS OpenMP threads: "
        f"{args.omp_threads or 'default'}.",
        "",
    ]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            side = cluster.uri(cluster.new_database("side"))
            latency_side_by_side(side, Path(tmp), args.base, args.enrolments, lines)
        replica_lag(cluster.uri(cluster.new_database("lag")), args.lag, lines)
        print("\n".join(lines), flush=True)
        if args.sizes:
            catch_up(cluster, args.sizes, lines)
    finally:
        cluster.destroy()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
