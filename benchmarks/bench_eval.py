"""Evaluation timings: embedding celeb24 cold vs from the cache, and the all-pairs metrics.

    python benchmarks/bench_eval.py [--celeb24 ../shared/data/celeb24] [--synthetic 5000]

Prints a Markdown table. The cold run embeds every crop with the default pack; the warm
run reads the same embeddings back from the SQLite cache; the metrics rows time
all-pair scoring + ROC/AUC/EER/TAR@FMR + identification + hypersphere on the embeddings.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _metrics(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    from facematch.eval import metrics as M
    from facematch.eval import protocols as P

    t0 = time.perf_counter()
    s = M.all_pair_scores(x, y)
    P.verification(s)
    P.identification(x, y)
    P.hypersphere(s, x, y, None)
    return time.perf_counter() - t0, int(s.genuine.size + s.impostor.size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--celeb24", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/celeb24")
    ap.add_argument("--synthetic", type=int, default=5000, help="images in the synthetic metrics run")
    args = ap.parse_args()
    from facematch import FaceMatcher
    from facematch.eval.data import list_identity_dir
    from facematch.eval.runner import embed_identity_set

    rows = []
    if args.celeb24.is_dir():
        m = FaceMatcher()
        ids = list_identity_dir(args.celeb24)
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            _, x, y = embed_identity_set(m, ids, detect=False, cache_dir=Path(cache), progress=False)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            emb, _, _ = embed_identity_set(m, ids, detect=False, cache_dir=Path(cache), progress=False)
            warm = time.perf_counter() - t0
            assert emb.n_from_cache == len(ids)
        rows.append((f"embed celeb24 ({len(ids)} crops), cold", cold))
        rows.append((f"embed celeb24 ({len(ids)} crops), from cache", warm))
        t, n = _metrics(x, y)
        rows.append((f"metrics on celeb24 ({n:,} pairs)", t))
    rng = np.random.default_rng(0)
    n = args.synthetic
    x = rng.normal(size=(n, 512)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, n // 20, n)
    t, pairs = _metrics(x, y)
    rows.append((f"metrics on {n} synthetic 512-D embeddings ({pairs:,} pairs)", t))
    print("| step | seconds |\n|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} |")


if __name__ == "__main__":
    main()
