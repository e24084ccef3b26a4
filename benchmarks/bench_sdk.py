"""SDK speed on this machine: detection, embedding, end-to-end verify, peak RSS.

Three pipelines on the same pairs, in one run, taking turns one pass at a time:
facematch's defaults (the two images of a pair side by side), ``FaceMatcher(workers=1)``
(one after the other), and a reference built from the ``insightface`` package's own SCRFD
decoder and ``norm_crop`` with the same two ONNX files (install it for the comparison only:
``pip install --no-deps insightface==2.1 scikit-image scipy requests``). Accuracy is
compared on the same pairs. Results go in benchmarks/README.md.

    python benchmarks/bench_sdk.py [--images ../shared/data/wild] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from facematch import FaceMatcher
from facematch.model_files import load_card, resolve_model_path

REPO = Path(__file__).resolve().parents[1]


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def portrait_pairs(images: Path) -> tuple[list[tuple[Path, Path]], dict[str, str]]:
    """Single-person photos from labels.csv and all pairs among them."""
    import csv

    labels: dict[str, str] = {}
    with (images / "labels.csv").open() as f:
        for row in csv.DictReader(f):
            ids = row["identities"]
            if ids and ids != "unlabelled" and ";" not in ids:
                labels[row["file"]] = ids
    files = sorted(labels)
    return [(images / a, images / b) for a, b in itertools.combinations(files, 2)], labels


class ReferencePipeline:
    """insightface's SCRFD + norm_crop + ArcFaceONNX on the same ONNX files (det_size 640, as insightface ships)."""

    def __init__(self, threads: int | None) -> None:
        import onnxruntime as ort
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        from insightface.model_zoo.scrfd import SCRFD
        from insightface.utils.face_align import norm_crop

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        det_path = str(resolve_model_path(load_card("scrfd_500m_bnkps")))
        rec_path = str(resolve_model_path(load_card("w600k_mbf")))
        self.det = SCRFD(det_path, session=ort.InferenceSession(det_path, opts, providers=["CPUExecutionProvider"]))
        self.det.prepare(-1, input_size=(640, 640), det_thresh=0.5)
        self.rec = ArcFaceONNX(
            rec_path, session=ort.InferenceSession(rec_path, opts, providers=["CPUExecutionProvider"])
        )
        self.rec.prepare(-1)
        self.norm_crop = norm_crop

    def embed_largest(self, path: Path) -> np.ndarray:
        img = cv2.imread(str(path))
        bboxes, kpss = self.det.detect(img, input_size=(640, 640))
        area = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
        i = int(np.argmax(area))
        crop = self.norm_crop(img, kpss[i], image_size=112)
        feat = self.rec.get_feat(crop).reshape(-1)
        return feat / np.linalg.norm(feat)

    def verify(self, a: Path, b: Path) -> float:
        return float(self.embed_largest(a) @ self.embed_largest(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "wild")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all pairs for the verify timing")
    ap.add_argument("--max-pairs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.images.is_dir():
        sys.exit(f"{args.images} is absent: pass --images DIR with a labels.csv")

    pairs, labels = portrait_pairs(args.images)
    rng = np.random.default_rng(0)
    pairs = [pairs[i] for i in rng.permutation(len(pairs))[: args.max_pairs]]
    photos = sorted({p for pair in pairs for p in pair})
    m = FaceMatcher(threads=args.threads)  # default: verify runs its two images side by side
    m_seq = FaceMatcher(threads=args.threads, workers=1)  # one image after the other, ORT's default threads
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "pairs": len(pairs),
        "photos": len(photos),
    }

    # warm-up
    for p in photos[:3]:
        m.verify(p, p)
        m_seq.verify(p, p)

    # detection ms per image (decode excluded), at the adaptive input size
    decoded = [m.load(p) for p in photos]
    t_det = []
    for d in decoded * 2:
        t0 = time.perf_counter()
        m.detector.detect(d.pixels, input_size=m.det_size)
        t_det.append((time.perf_counter() - t0) * 1e3)
    out["detect_ms_p50"] = round(statistics.median(t_det), 2)
    t_dec = []
    for p in photos:
        t0 = time.perf_counter()
        m.load(p)
        t_dec.append((time.perf_counter() - t0) * 1e3)
    out["decode_ms_p50"] = round(statistics.median(t_dec), 2)

    # embedding throughput
    crops = (
        np.stack([cv2.imread(str(p)) for p in sorted((REPO.parent / "shared/data/celeb24").glob("*/*.png"))[:256]])
        if (REPO.parent / "shared/data/celeb24").is_dir()
        else np.stack([m.align(p, m.detect(p)[0])[0] for p in photos] * 8)
    )
    for bs in (1, 32):
        n = 128 if bs == 1 else 256
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            m.embed_aligned(crops[i % len(crops) : i % len(crops) + bs])
        out[f"embed_faces_per_s_batch{bs}"] = round(n / (time.perf_counter() - t0), 1)

    # end-to-end verify, facematch vs reference, interleaved per round
    ref = None
    try:
        ref = ReferencePipeline(args.threads)
        for p in photos[:3]:
            ref.verify(p, p)
    except ImportError as exc:
        out["reference"] = f"not measured: {exc}"
    lat_fm: list[float] = []
    lat_ref: list[float] = []
    lat_seq: list[float] = []
    sims_fm: list[float] = []
    sims_ref: list[float] = []
    # Interleaved by block (one pass over all pairs per pipeline, in turn, each round), not per
    # pair: ONNX Runtime's default thread pools spin for a while after each run and would steal
    # the cores from whichever pipeline runs right after them.
    for _ in range(args.rounds):
        for a, b in pairs:
            t0 = time.perf_counter()
            r = m.verify(a, b)
            lat_fm.append((time.perf_counter() - t0) * 1e3)
            sims_fm.append(r.similarity)
        for a, b in pairs:
            t0 = time.perf_counter()
            m_seq.verify(a, b)
            lat_seq.append((time.perf_counter() - t0) * 1e3)
        if ref is not None:
            for a, b in pairs:
                t0 = time.perf_counter()
                sims_ref.append(ref.verify(a, b))
                lat_ref.append((time.perf_counter() - t0) * 1e3)
    thr = m.threshold_for()
    truth = [labels[a.name] == labels[b.name] for a, b in pairs] * args.rounds
    out["facematch_verify_ms_p50"] = round(percentile(lat_fm, 50), 1)
    out["facematch_verify_ms_p95"] = round(percentile(lat_fm, 95), 1)
    out["facematch_pairs_per_s"] = round(1e3 * len(lat_fm) / sum(lat_fm), 2)
    out["facematch_sequential_verify_ms_p50"] = round(percentile(lat_seq, 50), 1)
    out["facematch_sequential_pairs_per_s"] = round(1e3 * len(lat_seq) / sum(lat_seq), 2)
    out["facematch_accuracy"] = round(float(np.mean([(s >= thr) == t for s, t in zip(sims_fm, truth, strict=True)])), 4)
    if ref is not None:
        out["reference_verify_ms_p50"] = round(percentile(lat_ref, 50), 1)
        out["reference_verify_ms_p95"] = round(percentile(lat_ref, 95), 1)
        out["reference_pairs_per_s"] = round(1e3 * len(lat_ref) / sum(lat_ref), 2)
        ref_ok = [(s >= thr) == t for s, t in zip(sims_ref, truth, strict=True)]
        out["reference_accuracy"] = round(float(np.mean(ref_ok)), 4)
        out["speedup"] = round(out["facematch_pairs_per_s"] / out["reference_pairs_per_s"], 2)  # type: ignore[operator]
        out["speedup_sequential"] = round(out["facematch_sequential_pairs_per_s"] / out["reference_pairs_per_s"], 2)  # type: ignore[operator]
        out["similarity_max_abs_diff_vs_reference"] = round(float(np.max(np.abs(np.subtract(sims_fm, sims_ref)))), 4)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
