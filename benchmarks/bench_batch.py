"""Batch verification: ``FaceMatcher.verify_many(pairs)`` vs a loop of ``FaceMatcher.verify`` on the same pairs.

Side by side in one run, taking turns one pass at a time (loop, batch, loop, batch, ...), on the
same matcher (defaults: 2 workers). Three pair sets from the shared data:

- ``wild-all-pairs``: every pair of the single-person photos of ``../shared/data/wild`` (each image
  in many pairs, as in a pairs file or a deduplication job);
- ``wild-disjoint``: the same photos in disjoint pairs (each image in exactly one pair: nothing to
  share, so only the parallel preparation and batched embedding count);
- ``celeb24-aligned``: aligned 112x112 crops of ``../shared/data/celeb24``, each in 4 pairs (``aligned=True``:
  no detection, embedding only).

Decisions and similarities of the two ways are compared (they must agree). Results go in
benchmarks/batch_results.md.

    python benchmarks/bench_batch.py [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from facematch import FaceMatcher
from facematch.errors import FacematchError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEMATCH_SHARED", REPO.parent / "shared"))


def single_person_photos(wild: Path) -> list[Path]:
    with (wild / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    return sorted(
        wild / r["file"]
        for r in rows
        if r["identities"] and r["identities"] != "unlabelled" and ";" not in r["identities"]
    )


def pair_sets(shared: Path) -> dict[str, tuple[list[tuple[Path, Path]], bool]]:
    photos = single_person_photos(shared / "data" / "wild")
    crops = sorted(
        p for d in sorted((shared / "data" / "celeb24").iterdir()) if d.is_dir() for p in sorted(d.iterdir())[:4]
    )
    crops = crops[:48]
    aligned_pairs = [(crops[i], crops[(i + k) % len(crops)]) for i in range(len(crops)) for k in (1, 2)]
    return {
        "wild-all-pairs": (list(itertools.combinations(photos, 2)), False),
        "wild-disjoint": (list(zip(photos[0::2], photos[1::2], strict=False)), False),
        "celeb24-aligned": (aligned_pairs, True),
    }


def loop(matcher: FaceMatcher, pairs: list[tuple[Path, Path]], aligned: bool) -> list[Any]:
    out: list[Any] = []
    for a, b in pairs:
        try:
            out.append(matcher.verify(a, b, aligned=aligned))
        except FacematchError as exc:
            out.append(exc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    matcher = FaceMatcher()
    sets = pair_sets(SHARED)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "workers": matcher.workers},
        "rounds": args.rounds,
        "sets": {},
    }
    for name, (pairs, aligned) in sets.items():
        images = len({p for pair in pairs for p in pair})
        matcher.verify_many(pairs[:2], aligned=aligned)  # warm-up
        t_loop: list[float] = []
        t_batch: list[float] = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            looped = loop(matcher, pairs, aligned)
            t_loop.append(time.perf_counter() - t)
            t = time.perf_counter()
            batched = matcher.verify_many(pairs, aligned=aligned)
            t_batch.append(time.perf_counter() - t)
        worst = 0.0
        for p, w in zip(batched, looped, strict=True):
            if isinstance(w, FacematchError):
                assert not p.ok and type(p.error) is type(w)
            else:
                assert p.ok and p.result is not None and p.result.is_match == w.is_match
                worst = max(worst, abs(p.result.similarity - w.similarity))
        lo, ba = statistics.median(t_loop), statistics.median(t_batch)
        row = {
            "pairs": len(pairs),
            "distinct_images": images,
            "uses_per_image": round(2 * len(pairs) / images, 2),
            "aligned": aligned,
            "loop_s": round(lo, 3),
            "batch_s": round(ba, 3),
            "loop_pairs_per_s": round(len(pairs) / lo, 1),
            "batch_pairs_per_s": round(len(pairs) / ba, 1),
            "speedup": round(lo / ba, 2),
            "max_similarity_difference": worst,
            "loop_rounds_s": [round(x, 3) for x in t_loop],
            "batch_rounds_s": [round(x, 3) for x in t_batch],
        }
        report["sets"][name] = row
        print(
            f"{name:16s} {len(pairs):4d} pairs / {images:3d} images: loop {lo:6.2f} s, verify_many {ba:6.2f} s "
            f"-> {lo / ba:4.1f}x  (max |Δsim| {worst:.1e})",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
