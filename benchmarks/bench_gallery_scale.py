"""Gallery search at 100k-10M templates on galleries fitted to real face embeddings.

Data: ``facematch.eval.synthetic`` fitted to the default model's embeddings of
``../shared/data/celeb24`` (embedded once, cached in a temp directory); galleries of
N/T identities x T templates streamed from it into a memory-mapped fp32 file (the
"store" that re-rank reads), mated probes (fresh views of enrolled identities) and
non-mated probes (never-enrolled identities). Exact answers come from a flat fp32 scan.

Every cell runs the gallery's own search (``facematch.gallery.search.search``: shortlist,
widening, exact re-rank, max aggregation, k=5) over a ``FaissIndex``; the stand-in store
answers re-rank reads from the memory map. Measured: identity-level recall@1 against
exact search (mated probes), open-set decision agreement with exact search at the
FPIR-0.01 threshold of the model card's calibration over N templates (all probes),
p50/p99 latency for 1 probe and for batches of 64, build time, memory.

    python benchmarks/bench_gallery_scale.py fit
    python benchmarks/bench_gallery_scale.py sweep --size 100000 --out /tmp/sweep-100k.md
    python benchmarks/bench_gallery_scale.py sweep --size 10000000 --configs ivf@4096/sq8 --mated 500 --non-mated 1000
    python benchmarks/bench_gallery_scale.py gallery --size 1000000      # full Gallery: identify, enrolment p50/p99
    python benchmarks/bench_gallery_scale.py threads                      # FAISS threads: idle vs busy core
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import pickle
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from facematch.eval.synthetic import SyntheticFaces, SyntheticGallery, fit_synthetic
from facematch.gallery.config import IndexConfig
from facematch.gallery.index import FaissIndex, import_faiss, training_sample
from facematch.gallery.openset import threshold_for_fpir
from facematch.gallery.owners import TemplateOwners
from facematch.gallery.search import search

REPO = Path(__file__).resolve().parents[1]
CELEB24 = Path(os.environ.get("FACEMATCH_SHARED", REPO.parent / "shared")) / "data" / "celeb24"
CACHE = Path(os.environ.get("FACEMATCH_BENCH_CACHE", Path(tempfile.gettempdir()) / "facematch-scale"))
D = 512
MODEL_ID = "w600k_mbf"  # the default embedder: its card's calibration gives the FPIR threshold
K = 5  # candidates asked for, as Gallery.identify's default
FPIR = 0.01


# ---- data ---------------------------------------------------------------------------------------
def celeb24_embeddings() -> tuple[np.ndarray, np.ndarray, str]:
    """The default matcher's embeddings of celeb24's aligned crops (cached), labels, model id."""
    from facematch import FaceMatcher
    from facematch.eval.data import list_identity_dir

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "celeb24-embeddings.npz"
    if path.is_file():
        z = np.load(path)
        return z["emb"], z["labels"], str(z["model"])
    data = list_identity_dir(CELEB24)
    matcher = FaceMatcher()
    emb, _ = matcher.embed_aligned_with_norms([str(p) for p in data.paths])
    np.savez(path, emb=emb, labels=data.labels, model=matcher.model_id)
    return emb, data.labels, matcher.model_id


def synthetic_model() -> tuple[SyntheticFaces, np.ndarray, np.ndarray]:
    emb, labels, model_id = celeb24_embeddings()
    key = hashlib.sha256(emb.tobytes() + labels.tobytes()).hexdigest()[:16]
    path = CACHE / f"synthetic-{key}.pkl"
    if path.is_file():
        with path.open("rb") as f:
            return pickle.load(f), emb, labels  # our own cache file
    t = time.perf_counter()
    model = fit_synthetic(emb, labels, source=f"celeb24 ({model_id})")
    print(f"fitted the synthetic model in {time.perf_counter() - t:.0f} s", flush=True)
    with path.open("wb") as f:
        pickle.dump(model, f)
    return model, emb, labels


def gallery_vectors(gal: SyntheticGallery) -> np.memmap:
    """The gallery's fp32 templates in a memory-mapped file (generated once; row i = template id i + 1)."""
    path = CACHE / f"gallery-{gal.n_templates}-{gal.per}-{gal.seed}.f32"
    done = path.with_suffix(".done")
    if not done.is_file():
        t = time.perf_counter()
        mm = np.memmap(path, np.float32, "w+", shape=(gal.n_templates, D))
        for ids, _, x in gal.chunks():
            mm[ids[0] - 1 : ids[-1]] = x
        mm.flush()
        del mm
        done.write_text(f"{time.perf_counter() - t:.1f}")
        print(f"generated {gal.n_templates:,} templates in {done.read_text()} s", flush=True)
    return np.memmap(path, np.float32, "r", shape=(gal.n_templates, D))


def chunks_of(mm: np.ndarray, rows: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(0, mm.shape[0], rows):
        x = np.ascontiguousarray(mm[i : i + rows])
        yield np.arange(i + 1, i + 1 + x.shape[0], dtype=np.int64), x


def exact_top1(mm: np.ndarray, q: np.ndarray, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Best template score and id of each probe, by a flat fp32 scan over the whole gallery (cached)."""
    path = CACHE / f"exact-{tag}.npz"
    if path.is_file():
        z = np.load(path)
        return z["s"], z["i"]
    faiss = import_faiss()
    best_s = np.full(q.shape[0], -np.inf, np.float32)
    best_i = np.full(q.shape[0], -1, np.int64)
    t = time.perf_counter()
    for ids, x in chunks_of(mm, 200_000):
        flat = faiss.IndexFlatIP(D)
        flat.add(x)
        s, i = flat.search(q, 1)
        better = s[:, 0] > best_s
        best_s[better], best_i[better] = s[better, 0], ids[i[better, 0]]
    np.savez(path, s=best_s, i=best_i)
    print(f"exact search of {q.shape[0]} probes over {mm.shape[0]:,} templates: {time.perf_counter() - t:.0f} s")
    return best_s, best_i


class ArrayStore:
    """The reads the gallery's search makes from its store, answered from the memory-mapped templates."""

    def __init__(self, mm: np.ndarray, per: int) -> None:
        self.mm, self.per = mm, per

    def embeddings(self, template_ids: list[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.unique(np.asarray(template_ids, np.int64))
        return ids, np.asarray(self.mm[ids - 1], np.float32)

    def embeddings_of_identities(self, keys: list[int], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = np.asarray(sorted(set(keys)), np.int64)
        tids = (k[:, None] * self.per + 1 + np.arange(self.per)).reshape(-1)
        return tids, np.repeat(k, self.per), np.asarray(self.mm[tids - 1], np.float32)


# ---- measuring ----------------------------------------------------------------------------------
def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def latency(fn: Callable[[int], object], reps: int, budget_s: float) -> tuple[float, float, int]:
    times: list[float] = []
    end = time.perf_counter() + budget_s
    for i in range(reps):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
        if time.perf_counter() > end and len(times) >= 5:
            break
    a = np.asarray(times) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), len(times)


def parse_config(spec: str, n: int) -> IndexConfig:
    """``flat/sq8``, ``ivf@4096/sq8``, ``ivf@rule/pq64`` (nlist = the gallery's rule), ``ivf@rule/4/pq4x128``
    (a quarter of the rule's lists, 4-bit fast-scan PQ), ``hnsw32/fp32``."""
    kind, storage = spec.rsplit("/", 1)
    kw: dict[str, Any] = {"device": "cpu", "min_train": 1}
    if storage.startswith("pq4x"):  # 4-bit fast-scan PQ with pq_m sub-quantisers: pq4x128
        kw.update(storage="pq4", pq_m=int(storage[4:]))
    elif storage.startswith("pq"):
        kw.update(storage="pq", pq_m=int(storage[2:] or 64))
    else:
        kw["storage"] = storage
    if kind.startswith("ivf"):
        nl = kind.split("@")[1] if "@" in kind else "rule"
        rule = IndexConfig().nlist_for(n)
        nlist = rule if nl == "rule" else rule // int(nl[5:]) if nl.startswith("rule/") else int(nl)
        kw.update(kind="ivf", nlist=nlist)
    elif kind.startswith("hnsw"):
        kw.update(kind="hnsw", hnsw_m=int(kind[4:] or 32))
    else:
        kw["kind"] = "flat"
    return IndexConfig(**kw)


def search_params(cfg: IndexConfig, args: argparse.Namespace) -> list[IndexConfig]:
    if cfg.kind == "ivf":
        return [replace(cfg, nprobe=p) for p in args.nprobe if p <= (cfg.nlist or 1)]
    if cfg.kind == "hnsw":
        return [replace(cfg, ef_search=e) for e in args.ef_search]
    return [cfg]


def build(cfg: IndexConfig, mm: np.ndarray) -> tuple[FaissIndex, dict[str, float]]:
    n = mm.shape[0]
    gc.collect()
    before = rss_bytes()
    t = time.perf_counter()
    index = FaissIndex(D, cfg)
    size = index.training_size(n)
    pick = np.sort(np.random.default_rng(1).choice(n, size, replace=False)) if 0 < size < n else np.arange(size)
    train = np.ascontiguousarray(mm[pick]) if size else np.zeros((0, D), np.float32)
    index.rebuild_from(training_sample(train, size), n, chunks_of(mm))
    build_s = time.perf_counter() - t
    del train
    gc.collect()
    rss = rss_bytes() - before
    ser = index.memory_bytes() if n <= 2_000_000 else None
    return index, {"build_s": build_s, "rss_B": rss / n, "index_B": (ser if ser is not None else rss) / n}


def run_cell(
    index: FaissIndex,
    cfg: IndexConfig,
    sync: SimpleNamespace,
    q: np.ndarray,
    truth: np.ndarray,
    exact_dec: np.ndarray,
    exact_id: np.ndarray,
    thr: float,
    n_ids: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    index.configure_search(cfg)
    sync.config = cfg

    def run(rows: np.ndarray) -> list[list[tuple[int, float, int]]]:
        return search(sync, rows, K, "max", n_identities=n_ids, top_k=3)  # type: ignore[arg-type]

    top_id = np.full(q.shape[0], -1, np.int64)
    top_s = np.full(q.shape[0], -np.inf)
    for i in range(0, q.shape[0], 64):
        for j, ranked in enumerate(run(q[i : i + 64])):
            if ranked:
                top_id[i + j], top_s[i + j] = ranked[0][0], ranked[0][1]
    dec = np.where(top_s >= thr, top_id, -1)
    mated = truth >= 0
    p1 = latency(lambda i: run(q[i % q.shape[0]][None]), args.reps, args.budget)
    p64 = latency(lambda i: run(q[(i * 64) % (q.shape[0] - 64) :][:64]), max(5, args.reps // 10), args.budget)
    accepted = mated & (exact_dec >= 0)
    return {
        "recall": float(np.mean(top_id[mated] == exact_id[mated])),
        "recall_accepted": float(np.mean(top_id[accepted] == exact_id[accepted])),
        "recall_all": float(np.mean(top_id == exact_id)),
        "agree": float(np.mean(dec == exact_dec)),
        "agree_mated": float(np.mean(dec[mated] == exact_dec[mated])),
        "p50_1": p1[0],
        "p99_1": p1[1],
        "p50_64": p64[0],
        "p99_64": p64[1],
        "reps_1": p1[2],
    }


DEFAULT_CONFIGS = {
    "small": [
        "flat/fp32",
        "flat/fp16",
        "flat/sq8",
        "ivf@rule/fp32",
        "ivf@rule/sq8",
        "ivf@rule/pq64",
        "ivf@rule/4/fp32",
        "ivf@rule/4/sq8",
        "ivf@rule/4/pq64",
        "hnsw16/fp32",
        "hnsw32/fp32",
        "hnsw32/sq8",
    ],
}


def cmd_sweep(args: argparse.Namespace) -> None:
    faiss = import_faiss()
    gal, mm, q, truth, _, ex_id, thr, ex_dec = sweep_data(args)
    n = gal.n_templates
    mated = truth >= 0
    header = [
        f"### N = {n:,} templates ({gal.n_identities:,} identities x {args.per})",
        "",
        f"Probes: {int(mated.sum())} mated, {int((~mated).sum())} non-mated. FPIR-{FPIR} threshold over {n:,} "
        f"templates (card calibration, extrapolated): {thr:.3f}. Exact search at that threshold: "
        f"{np.mean(ex_dec[mated] == truth[mated]):.3f} of mated probes accepted as the right identity, "
        f"{np.mean(ex_dec[~mated] >= 0):.4f} of non-mated probes falsely accepted; rank-1 of mated probes "
        f"{np.mean(ex_id[mated] == truth[mated]):.3f}.",
        "",
        "| index | search | re-rank | recall@1 | recall@1 (accepted) | agree | agree (mated) | p50 1 ms | p99 1 ms | "
        "p50 64 ms | p99 64 ms | build s | index B/tmpl | RSS B/tmpl |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(header), flush=True)
    lines = list(header)

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        if args.out:  # written as it goes: a long sweep that dies keeps its rows
            args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")

    owners = TemplateOwners(np.arange(1, n + 1, dtype=np.int64), gal.owners(np.arange(1, n + 1)))
    store = ArrayStore(mm, args.per)
    specs = args.configs or DEFAULT_CONFIGS["small"]
    t_all = time.perf_counter()
    for spec in specs:
        cfg = parse_config(spec, n)
        t = time.perf_counter()
        index, b = build(cfg, mm)
        print(f"# built {spec} ({index.describe()}) in {time.perf_counter() - t:.0f} s", flush=True)
        if args.out:
            args.out.with_suffix(".log").open("a").write(f"built {spec} {index.describe()} {b}\n")
        sync = SimpleNamespace(index=index, owners=owners, config=cfg, store=store, dim=D)
        for scfg in search_params(cfg, args):
            approximate = cfg.kind != "flat" or cfg.storage != "fp32"
            cells = [(False, args.rerank_factor[0])] + [(True, f) for f in args.rerank_factor if approximate]
            for rerank, factor in cells:
                c = replace(scfg, rerank=rerank, rerank_factor=factor)
                r = run_cell(index, c, sync, q, truth, ex_dec, ex_id, thr, gal.n_identities, args)
                knob = (
                    f"nprobe {c.nprobe}"
                    if c.kind == "ivf"
                    else f"efSearch {c.ef_search}"
                    if c.kind == "hnsw"
                    else "scan"
                )
                row = (
                    f"| {spec.replace('@rule', '').replace('rule/4', 'nlist/4')} (nlist {c.nlist}) | {knob} | "
                    f"{f'{factor} x' if rerank else 'no'} | {r['recall']:.3f} | {r['recall_accepted']:.3f} | "
                    f"{r['agree']:.3f} | {r['agree_mated']:.3f} | "
                    f"{r['p50_1']:.2f} | {r['p99_1']:.2f} | {r['p50_64']:.1f} | {r['p99_64']:.1f} | "
                    f"{b['build_s']:.0f} | {b['index_B']:.0f} | {b['rss_B']:.0f} |"
                )
                if c.kind != "ivf":
                    row = row.replace(f" (nlist {c.nlist})", "")
                emit(row)
        del index, sync
        gc.collect()
    emit("")
    emit(f"Sweep time: {(time.perf_counter() - t_all) / 60:.0f} min; FAISS {faiss.__version__}.")


def sweep_data(args: argparse.Namespace) -> tuple[Any, ...]:
    """The gallery, probes, exact answers and threshold a sweep of this size uses (cached)."""
    model, _, _ = synthetic_model()
    n = args.size
    gal = SyntheticGallery(model, n // args.per, args.per, seed=args.seed)
    mm = gallery_vectors(gal)
    qm, truth = gal.mated_probes(args.mated, seed=1)
    qn = gal.non_mated_probes(args.non_mated, seed=1)
    q = np.concatenate([qm, qn])
    truth = np.concatenate([truth, np.full(qn.shape[0], -1, np.int64)])
    ex_s, ex_t = exact_top1(mm, q, f"{n}-{args.per}-{args.seed}-{args.mated}-{args.non_mated}")
    from facematch.model_files import load_card

    cal = load_card(MODEL_ID).calibration
    assert cal is not None
    thr = threshold_for_fpir(cal, FPIR, n)
    ex_id = gal.owners(ex_t)
    return gal, mm, q, truth, ex_s, ex_id, thr, np.where(ex_s >= thr, ex_id, -1)


def pct(a: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(a) * 1e3, q)) if len(a) else float("nan")


def enrol_all(path: Path, gal: SyntheticGallery, mm: np.ndarray, background: bool, synchronous: str) -> dict[str, Any]:
    """Enrol the whole synthetic gallery through ``Gallery.enroll_embeddings`` (one identity per call,
    the default ``auto`` index); every call's latency and the retrains."""
    from facematch.gallery import Gallery

    shutil.rmtree(path, ignore_errors=True)
    lat = np.zeros(gal.n_identities)
    retrains: list[dict[str, float]] = []
    t_all = time.perf_counter()
    with Gallery(path, synchronous=synchronous) as g:  # type: ignore[arg-type]
        g._sync.background_retrain = background  # False: the old behaviour (inline on the crossing write)
        running = None
        for i in range(gal.n_identities):
            x = np.asarray(mm[i * gal.per : (i + 1) * gal.per])
            before = g._sync.index.describe() if g._sync.index is not None else ""
            t = time.perf_counter()
            g.enroll_embeddings(f"id{i:07d}", x, MODEL_ID)
            lat[i] = time.perf_counter() - t
            job = g._sync._job  # the background retrain under way, if any
            if not background and g._sync.index is not None and g._sync.index.describe() != before and i:
                retrains.append({"at": float(i), "until": float(i), "seconds": float(lat[i])})
            if job is not None:
                if running is None:
                    running = {"at": float(i), "t0": time.perf_counter(), "logged": 0.0}
                running["logged"] = max(running["logged"], float(job.log.templates))  # writes it will replay
            elif running is not None:
                running.update(until=float(i), seconds=time.perf_counter() - running.pop("t0"))
                retrains.append(running)
                running = None
        g.wait_for_retrain()
        if running is not None:
            running.update(until=float(gal.n_identities), seconds=time.perf_counter() - running.pop("t0"))
            retrains.append(running)
        live = g.info().index
    total = time.perf_counter() - t_all
    windows = []
    inside = np.zeros(lat.size, bool)
    for r in retrains:
        lo, hi = int(r["at"]) - 2000, int(r["until"]) + 2000
        w = lat[max(lo, 0) : hi]
        inside[max(lo, 0) : hi] = True
        windows.append({**r, "n": w.size, "p50": pct(w, 50), "p99": pct(w, 99), "max": pct(w, 100)})
    return {
        "total_s": total,
        "p50": pct(lat, 50),
        "p99": pct(lat, 99),
        "p999": pct(lat, 99.9),
        "max": pct(lat, 100),
        "retrains": windows,
        "outside": (pct(lat[~inside], 50), pct(lat[~inside], 99), float(np.mean(inside))),
        "live": live,
    }


def cmd_gallery(args: argparse.Namespace) -> None:
    """Full Gallery at N templates: bulk enrolment with inline vs background retrain, then identify."""
    from facematch.gallery import Gallery

    gal, mm, q, truth, _, ex_id, thr, ex_dec = sweep_data(args)
    n = gal.n_templates
    lines = [
        f"### Full Gallery, N = {n:,} templates ({gal.n_identities:,} identities x {gal.per}), auto index",
        "",
        f"Enrolment: one `enroll_embeddings` call per identity, SQLite synchronous={args.synchronous}.",
        "",
    ]

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)
        if args.out:
            args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")

    path = CACHE / f"gallery-{n}.fmg"
    if "enrol" in args.steps:
        emit(
            "| retrain | enrolment total | p50 ms | p99 ms | p99.9 ms | max ms | "
            "retrains (templates at start: s, window p50/p99/max ms, templates logged for the replay) |"
        )
        emit("|---|---:|---:|---:|---:|---:|---|")
        for mode in args.modes:
            where = path if mode == "background" else CACHE / f"gallery-{n}-{mode}.fmg"
            r = enrol_all(where, gal, mm, mode == "background", args.synchronous)
            if where != path:
                shutil.rmtree(where, ignore_errors=True)
            detail = "; ".join(
                f"{int(w['at']) * gal.per:,}: {w['seconds']:.1f} s, {w['p50']:.2f}/{w['p99']:.2f}/{w['max']:.0f}"
                + (f", {int(w['logged']):,} logged" if "logged" in w else "")
                for w in r["retrains"]
            )
            emit(
                f"| {mode} | {r['total_s'] / 60:.1f} min | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | "
                f"{r['max']:.0f} | {detail} |"
            )
            p50_out, p99_out, share = r["outside"]
            print(
                f"# {mode}: {r['live']}; outside the retrain windows ({1 - share:.0%} of the calls) "
                f"p50/p99 {p50_out:.2f}/{p99_out:.2f} ms",
                flush=True,
            )
        emit()
    if "identify" in args.steps:
        with Gallery(path) as g:
            assert g.wait_for_retrain(3600)
            live = g.info().index

            def ident(rows: np.ndarray) -> list[Any]:
                return g.identify_embeddings(rows, MODEL_ID, k=K)

            res = [r for i in range(0, q.shape[0], 64) for r in ident(q[i : i + 64])]
            got = np.asarray([int(r.identity_id[2:]) if r.candidates and not r.is_unknown else -1 for r in res])
            top = np.asarray([int(r.candidates[0].identity_id[2:]) if r.candidates else -1 for r in res])
            assert abs(res[0].threshold - thr) < 1e-6
            p1 = latency(lambda i: ident(q[i % q.shape[0]][None]), args.reps, args.budget)
            p64 = latency(lambda i: ident(q[(i * 64) % (q.shape[0] - 64) :][:64]), max(5, args.reps // 10), args.budget)
        mated = truth >= 0
        emit(
            f"`Gallery.identify_embeddings` (k={K}, FPIR {FPIR}: threshold {thr:.3f}) on {live}: identity recall@1 "
            f"{np.mean(top[mated] == ex_id[mated]):.3f} of exact search (mated probes), open-set decision agreement "
            f"{np.mean(got == ex_dec):.3f} ({q.shape[0]} probes, {int(mated.sum())} mated); p50/p99 "
            f"{p1[0]:.2f}/{p1[1]:.2f} ms for 1 probe, {p64[0]:.1f}/{p64[1]:.1f} ms per batch of 64."
        )
        emit()


def cmd_threads(args: argparse.Namespace) -> None:
    """One-probe flat search at 20k templates: 1 FAISS thread vs FAISS's default, idle vs a busy core."""
    import subprocess
    import sys

    faiss = import_faiss()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.size, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(args.size, 500, replace=False)]
    indexes = {}
    for name, threads in (
        ("1 thread (per-call choice)", None),
        (f"{faiss.omp_get_max_threads()} threads (FAISS default)", 0),
    ):
        idx = FaissIndex(D, IndexConfig(device="cpu", search_threads=threads))
        idx.add(np.arange(args.size), x)
        indexes[name] = idx
    busy_code = (
        "import numpy as np\nfrom facematch import FaceMatcher\nm = FaceMatcher(threads=1, workers=1)\n"
        "c = np.zeros((8, 112, 112, 3), np.uint8)\nwhile True:\n    m.embed_crops(c)\n"
    )
    rows: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for cond in ("no extra load", "ONNX Runtime busy on one core"):
            proc = subprocess.Popen([sys.executable, "-c", busy_code]) if cond.startswith("ONNX") else None
            try:
                if proc is not None:
                    time.sleep(8)  # the model loaded and running
                for name, idx in indexes.items():
                    for i in range(20):
                        idx.search(q[i][None], 10)
                    ts = []
                    for i in range(args.reps):
                        t = time.perf_counter()
                        idx.search(q[i % q.shape[0]][None], 10)
                        ts.append(time.perf_counter() - t)
                    rows.setdefault((cond, name), []).extend(ts)
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)
    lines = [
        f"One-probe flat fp32 search, {args.size:,} random 512-D templates, top-10, {args.rounds} rounds x "
        f"{args.reps} searches per cell, cells taking turns; FAISS {faiss.__version__}:",
        "",
        "| load | FAISS threads | p50 ms | p99 ms |",
        "|---|---|---:|---:|",
    ]
    for (cond, name), ts in rows.items():
        lines.append(f"| {cond} | {name} | {pct(ts, 50):.2f} | {pct(ts, 99):.2f} |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def cmd_fit(args: argparse.Namespace) -> None:
    model, emb, labels = synthetic_model()
    check = model.check(emb, labels)
    text = [
        f"Synthetic model fitted to {model.source}: mean weight a = {model.mean_weight:.3f}, centre spectrum "
        f"exponent alpha = {model.alpha:.3f} (effective dimension {model.centre_effective_dim:.0f}), kappa = "
        f"{model.kappa:.3f}, within-identity offsets in {model.within.shape[0]} directions.",
        "",
        check.table(),
        "",
    ]
    print("\n".join(text))
    if args.out:
        args.out.write_text("\n".join(text), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit the synthetic model to celeb24 and print the check")
    f.add_argument("--out", type=Path)
    s = sub.add_parser("sweep", help="every index option on one gallery size")
    s.add_argument("--size", type=int, default=100_000)
    s.add_argument("--per", type=int, default=4, help="templates per identity")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mated", type=int, default=1000)
    s.add_argument("--non-mated", type=int, default=2000)
    s.add_argument("--configs", nargs="+")
    s.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    s.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256, 512])
    s.add_argument(
        "--rerank-factor", type=int, nargs="+", default=[4], help="re-rank widths: one re-ranked cell for each"
    )
    s.add_argument("--reps", type=int, default=300)
    s.add_argument("--budget", type=float, default=20.0, help="seconds per latency measurement at most")
    s.add_argument("--out", type=Path)
    g = sub.add_parser("gallery", help="full Gallery: bulk enrolment (inline vs background retrain), identify")
    g.add_argument("--size", type=int, default=1_000_000)
    g.add_argument("--per", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--mated", type=int, default=1000)
    g.add_argument("--non-mated", type=int, default=2000)
    g.add_argument("--steps", nargs="+", default=["enrol", "identify"], choices=["enrol", "identify"])
    g.add_argument("--modes", nargs="+", default=["inline", "background"], choices=["inline", "background"])
    g.add_argument("--synchronous", default="NORMAL", choices=["FULL", "NORMAL"], help="SQLite sync of the bulk load")
    g.add_argument("--reps", type=int, default=300)
    g.add_argument("--budget", type=float, default=30.0)
    g.add_argument("--out", type=Path)
    t = sub.add_parser("threads", help="FAISS threads per call: one-probe search, idle vs a busy core")
    t.add_argument("--size", type=int, default=20_000)
    t.add_argument("--reps", type=int, default=300)
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--out", type=Path)
    args = ap.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} cores; cache {CACHE}", flush=True)
    {"fit": cmd_fit, "sweep": cmd_sweep, "gallery": cmd_gallery, "threads": cmd_threads}[args.cmd](args)


if __name__ == "__main__":
    main()
