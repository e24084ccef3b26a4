"""Faithfulness and cost of ``FaceMatcher.explain`` (issue 14).

Deletion protocol on genuine pairs of celeb24 (aligned crops): blank the first crop's feature
cells (16×16 pixels each, filled with the embedder's mean colour) in the order a map ranks
them, most similar first, re-embed after each step and trace the similarity to the second
crop. The area under that curve (steps normalised to [0, 1]) is compared for four orders,
on the same pairs: the exact decomposition's cells, random order (seeded), the occlusion
method's cells (``explain(method="occlusion")``: 2-cell patches), and occlusion with 1-cell
patches (the deletion's own cells). A faithful map makes the similarity fall fast: a small area.

Also measured on every pair: the decomposition's cosine-reproduction residual, its similarity
against ``verify``'s, and the cost of ``explain`` (decomposition and occlusion) against one
``verify`` of the same pair, interleaved pass by pass. The cost is also measured on photos
(``../shared/data/wild``, detect + align), where ``verify`` includes detection.

    python benchmarks/bench_explain.py [--pairs 200] [--sides 1] [--json out.json]

Targets (issue 14): deletion AUC with the decomposition order <= 0.6 x random order (mean over
>= 200 pairs); residual <= 1e-4 on every pair; decomposition <= 2 x one verify on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from facematch import FaceMatcher
from facematch.explain import RESIDUAL_TOLERANCE, cell_edges, neutral_pixel, occlusion_cells

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def genuine_pairs(root: Path, n: int, seed: int) -> list[tuple[Path, Path]]:
    """``n`` genuine pairs drawn evenly over the identities (seeded)."""
    rng = np.random.default_rng(seed)
    per_id = {d.name: sorted(p for p in d.iterdir() if p.is_file()) for d in sorted(root.iterdir()) if d.is_dir()}
    per_id = {k: v for k, v in per_id.items() if len(v) >= 2}
    pools = {k: list(itertools.combinations(v, 2)) for k, v in per_id.items()}
    for pool in pools.values():
        rng.shuffle(pool)  # type: ignore[arg-type]
    out: list[tuple[Path, Path]] = []
    round_ = 0
    while len(out) < n:
        added = False
        for pool in pools.values():
            if round_ < len(pool) and len(out) < n:
                out.append(pool[round_])
                added = True
        if not added:
            break
        round_ += 1
    return out


def deletion_curve(
    matcher: FaceMatcher, crop: np.ndarray, other: np.ndarray, order: np.ndarray, fill: np.ndarray
) -> np.ndarray:
    """Similarity to ``other`` (a unit embedding) after blanking 0, 1, …, H·W cells in ``order``."""
    spec = matcher.embedder_card.explain
    gh, gw = (spec.feature_shape[1], spec.feature_shape[2]) if spec is not None else (7, 7)
    ys, xs = cell_edges(crop.shape[0], gh), cell_edges(crop.shape[1], gw)
    batch = np.repeat(crop[None], len(order) + 1, axis=0)
    for k, cell in enumerate(order, start=1):
        y, x = divmod(int(cell), gw)
        batch[k:, ys[y] : ys[y + 1], xs[x] : xs[x + 1]] = fill
    emb, _ = matcher.embed_crops(batch)
    return emb.astype(np.float64) @ other.astype(np.float64)


def auc(curve: np.ndarray) -> float:
    """Area under a deletion curve with its steps on [0, 1] (trapezoids)."""
    return float(np.sum((curve[1:] + curve[:-1]) / 2) / (len(curve) - 1))


def timed(fn, *args, **kw):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


ORDERS = ("decomposition", "random", "occlusion", "occlusion_1cell")


def run_deletion(matcher: FaceMatcher, pairs: list[tuple[Path, Path]], sides: int, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    fill = neutral_pixel(matcher)
    rows = []
    t_verify, t_dec, t_occ = [], [], []
    started = time.perf_counter()
    for n, (a, b) in enumerate(pairs):
        # interleaved: verify, decomposition, occlusion on the same pair
        res, tv = timed(matcher.verify, a, b, aligned=True)
        dec, td = timed(matcher.explain, a, b, aligned=True, method="decomposition")
        occ, to = timed(matcher.explain, a, b, aligned=True, method="occlusion")
        t_verify.append(tv)
        t_dec.append(td)
        t_occ.append(to)
        crops = np.stack([dec.first.crop, dec.second.crop])
        emb, _ = matcher.embed_crops(crops)
        single = occlusion_cells(matcher, crops, emb, patch_cells=1)  # occlusion with the deletion's own cells
        row = {
            "a": f"{a.parent.name}/{a.name}",
            "b": f"{b.parent.name}/{b.name}",
            "similarity": dec.similarity,
            "verify_similarity": res.similarity,
            "residual": dec.residual,
            "areas": {k: [] for k in ORDERS},
            "end": [],
        }
        for side in range(sides):
            crop, other = (dec.first.crop, emb[1]) if side == 0 else (dec.second.crop, emb[0])
            cells_d = dec.faces[side].cells.reshape(-1)
            cells_o = occ.faces[side].cells.reshape(-1)
            orders = {
                "decomposition": np.argsort(-cells_d, kind="stable"),
                "random": rng.permutation(cells_d.size),
                "occlusion": np.argsort(-cells_o, kind="stable"),
                "occlusion_1cell": np.argsort(-single[side].reshape(-1), kind="stable"),
            }
            for name, order in orders.items():
                curve = deletion_curve(matcher, crop, other, order, fill)
                row["areas"][name].append(auc(curve))
            row["end"].append(float(curve[-1]))
        rows.append(row)
        if (n + 1) % 20 == 0:
            el = time.perf_counter() - started
            print(f"  {n + 1}/{len(pairs)} pairs, {el:.0f} s", file=sys.stderr, flush=True)
    return {"rows": rows, "t_verify": t_verify, "t_decomposition": t_dec, "t_occlusion": t_occ}


def run_photo_cost(matcher: FaceMatcher, wild: Path, rounds: int) -> dict:
    """explain vs verify on photo pairs (detection included), whole passes interleaved."""
    files = []
    with (wild / "labels.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            ids = row["identities"].strip()
            if ids and ids != "unlabelled" and ";" not in ids:
                files.append(wild / row["file"])
    pairs = list(itertools.combinations(sorted(files), 2))[:20]
    times: dict[str, list[float]] = {"verify": [], "decomposition": [], "occlusion": []}
    for r in range(rounds):
        for name in times:
            if name == "occlusion" and r > 0:  # ~50x a verify: one pass is enough
                continue
            for a, b in pairs:
                if name == "verify":
                    _, t = timed(matcher.verify, a, b)
                else:
                    _, t = timed(matcher.explain, a, b, method=name)
                times[name].append(t)
    return {"pairs": len(pairs), "rounds": rounds, **{f"t_{k}": v for k, v in times.items()}}


def p50(xs: list[float]) -> float:
    return float(statistics.median(xs)) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED / "celeb24")
    ap.add_argument("--wild", type=Path, default=SHARED / "wild")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--sides", type=int, choices=(1, 2), default=1, help="blank the first crop only, or each in turn")
    ap.add_argument("--photo-rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    matcher = FaceMatcher()
    pairs = genuine_pairs(args.data, args.pairs, args.seed)
    warm = pairs[0]
    matcher.explain(*warm, aligned=True)  # builds the explain graphs (or reads them from the cache)
    matcher.explain(*warm, aligned=True, method="occlusion")
    t0 = time.perf_counter()
    dele = run_deletion(matcher, pairs, args.sides, args.seed)
    photo = run_photo_cost(matcher, args.wild, args.photo_rounds) if args.wild.is_dir() else None
    rows = dele["rows"]
    areas = {k: np.array([np.mean(r["areas"][k]) for r in rows]) for k in ORDERS}
    residuals = np.array([r["residual"] for r in rows])
    sim_diff = np.array([abs(r["similarity"] - r["verify_similarity"]) for r in rows])
    summary = {
        "pairs": len(rows),
        "sides": args.sides,
        "deletion_auc_mean": {k: float(v.mean()) for k, v in areas.items()},
        "deletion_auc_ratio_vs_random": {
            k: float(areas[k].mean() / areas["random"].mean()) for k in ORDERS if k != "random"
        },
        "deletion_auc_ratio_per_pair_median": float(np.median(areas["decomposition"] / areas["random"])),
        "pairs_where_decomposition_beats_random": int((areas["decomposition"] < areas["random"]).sum()),
        "pairs_where_decomposition_beats_occlusion": int((areas["decomposition"] < areas["occlusion"]).sum()),
        "start_similarity_mean": float(np.mean([r["similarity"] for r in rows])),
        "end_similarity_mean": float(np.mean([np.mean(r["end"]) for r in rows])),
        "residual_max": float(residuals.max()),
        "residual_median": float(np.median(residuals)),
        "pairs_over_tolerance": int((residuals > RESIDUAL_TOLERANCE).sum()),
        "similarity_vs_verify_max_abs_diff": float(sim_diff.max()),
        "aligned_ms_p50": {
            "verify": p50(dele["t_verify"]),
            "decomposition": p50(dele["t_decomposition"]),
            "occlusion": p50(dele["t_occlusion"]),
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    a = summary["aligned_ms_p50"]
    summary["aligned_cost_ratio"] = {k: a[k] / a["verify"] for k in ("decomposition", "occlusion")}
    if photo is not None:
        ph = {k: p50(photo[f"t_{k}"]) for k in ("verify", "decomposition", "occlusion")}
        summary["photo_ms_p50"] = ph
        summary["photo_pairs"] = {k: len(photo[f"t_{k}"]) for k in ("verify", "decomposition", "occlusion")}
        summary["photo_cost_ratio"] = {k: ph[k] / ph["verify"] for k in ("decomposition", "occlusion")}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "pairs": rows}, indent=1))


if __name__ == "__main__":
    main()
