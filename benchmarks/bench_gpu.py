"""GPU check: the PyTorch embedder and the torch flat search, measured where PyTorch runs.

What it measures (``--device cuda``; ``--device cpu`` runs the same code at smaller sizes to
prove the script, not to compare):

1. **cosine checks**: the torch ``w600k_mbf`` (ported from the ONNX weights) against the ONNX
   model on CPU ONNX Runtime, on celeb24 pack faces, for every precision/mode measured (bar 0.999);
2. **embedding faces/s** of the network on device tensors at batch 1/32/256/1024, fp16 vs fp32,
   eager vs CUDA graphs (the roofline to compare with: w600k_mbf is ~0.44 GMAC per face,
   memory-bound near 270k faces/s on an H200), plus the end-to-end ``embed()`` from uint8
   crops at batch 256 (host preprocessing included);
3. **detector cost on CPU** (SCRFD-500M on ONNX Runtime CPU, per image), which stays on CPU
   in the torch path;
4. **search p50** of :class:`TorchIndex` (fp16, k=10, one query) at 1M and 10M templates of
   dim 512, checked exact against FAISS CPU on a subsample (10M x 512 fp16 is ~10 GB: ~2.1 ms
   at 4.8 TB/s is the bandwidth floor), and FAISS-GPU flat at 1M when the probe passes.

    python benchmarks/bench_gpu.py --device cuda --out benchmarks/gpu_results.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _sync(torch: Any, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], torch: Any, device: str, *, seconds: float, min_iters: int = 3) -> float:
    """Mean seconds per call over ~``seconds`` (after one warm-up call)."""
    fn()
    _sync(torch, device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    _sync(torch, device)
    return (time.perf_counter() - t0) / n


def load_crops(limit: int) -> np.ndarray:
    import cv2

    files = sorted(p for p in (SHARED / "celeb24").glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no celeb24 faces under {SHARED / 'celeb24'}")
    crops = [cv2.imread(str(p)) for p in files[:limit]]
    return np.stack([c for c in crops if c is not None and c.shape == (112, 112, 3)])


def embedding_part(device: str, batches: list[int], seconds: float, crops: np.ndarray) -> dict[str, Any]:
    gpu = device == "cuda"
    import torch

    from facematch.matcher import FaceMatcher
    from facematch.model_files import load_card, resolve_model_path
    from facematch.zoo.torch_embedder import TorchEmbedder, build_module

    card = load_card("w600k_mbf")
    path = resolve_model_path(card)
    ref_matcher = FaceMatcher(workers=1)
    ref, _ = ref_matcher.embedder.embed(crops)
    variants = [("fp32", "eager"), ("fp16", "eager")]
    if device == "cuda":
        variants += [("fp32", "graphs"), ("fp16", "graphs")]
    top = max(batches)
    rows, checks = [], []
    w, h = card.input.size or (112, 112)
    for precision, mode in variants:
        emb = TorchEmbedder(
            build_module(card, path),
            card,
            device=device,
            max_batch=top,
            precision=precision,
            mode=mode,  # type: ignore[arg-type]
        )
        t0 = time.perf_counter()
        got, _ = emb.embed(crops)
        cos = np.sum(ref * got, axis=1)
        checks.append(
            {
                "precision": precision,
                "mode": mode,
                "faces": len(crops),
                "min_cosine": float(cos.min()),
                "mean_cosine": float(cos.mean()),
                "passed": bool(cos.min() >= 0.999),
                "first_call_s": round(time.perf_counter() - t0, 2),
            }
        )
        # on CPU, fp16 only at the smallest batch: torch's CPU half convolutions are very slow
        for b in batches if device == "cuda" or precision == "fp32" else batches[:1]:
            x = torch.randn((b, 3, h, w), device=device).to(emb._dtype)
            per_call = _timed(
                lambda emb=emb, x=x: emb.run_tensor(x), torch, device, seconds=seconds, min_iters=3 if gpu else 1
            )
            rows.append(
                {
                    "precision": precision,
                    "mode": mode,
                    "batch": b,
                    "faces_per_s": b / per_call,
                    "ms_per_batch": per_call * 1e3,
                }
            )
            print(f"  embed {precision}/{mode} batch {b}: {b / per_call:,.0f} faces/s", flush=True)
        del emb
    # end to end: uint8 crops -> to_blob on the host -> device -> unit vectors on the host
    e2e_batch = min(256, len(crops), top)
    best = ("fp16", "graphs") if device == "cuda" else ("fp32", "eager")
    emb = TorchEmbedder(
        build_module(card, path), card, device=device, max_batch=e2e_batch, precision=best[0], mode=best[1]
    )  # type: ignore[arg-type]
    batch = crops[:e2e_batch]
    per_call = _timed(lambda: emb.embed(batch), torch, device, seconds=seconds, min_iters=3 if gpu else 1)
    e2e = {"precision": best[0], "mode": best[1], "batch": e2e_batch, "faces_per_s": e2e_batch / per_call}
    print(f"  embed() end to end {best}: {e2e['faces_per_s']:,.0f} faces/s", flush=True)
    return {"throughput": rows, "cosine": checks, "end_to_end": e2e}


def detector_part(seconds: float) -> dict[str, Any]:
    import cv2

    from facematch.matcher import FaceMatcher

    m = FaceMatcher(workers=1, providers=["cpu"])
    photos = [p for p in sorted((SHARED / "wild").glob("*.jpg"))][:8]
    images = [cv2.imread(str(p)) for p in photos]
    times = []
    for img in images:
        m.detect(img)  # warm-up per input size
        t0 = time.perf_counter()
        reps = 0
        while reps < 2 or time.perf_counter() - t0 < seconds / len(images):
            m.detect(img)
            reps += 1
        times.append((time.perf_counter() - t0) / reps)
    largest = []
    for img in images:
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):  # an image without a face still costs its passes
            m.largest_face(img)
        largest.append(time.perf_counter() - t0)
    return {
        "images": len(images),
        "threads": os.cpu_count(),
        "detect_ms_median": statistics.median(times) * 1e3,
        "largest_face_ms_median": statistics.median(largest) * 1e3,
    }


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def search_part(device: str, sizes: list[int], dim: int, queries: int, chunk: int) -> dict[str, Any]:
    import faiss
    import torch

    from facematch.gallery.config import IndexConfig
    from facematch.gallery.torch_index import TorchIndex

    rng = np.random.default_rng(0)
    out: list[dict[str, Any]] = []
    for n in sizes:
        for storage in ("fp16", "fp32") if n <= sizes[0] else ("fp16",):
            idx = TorchIndex(
                dim, IndexConfig(engine="torch", storage=storage, device="gpu" if device == "cuda" else "cpu")
            )  # type: ignore[arg-type]
            t0 = time.perf_counter()
            sample = None
            for start in range(0, n, chunk):
                block = _unit_rows(rng, min(chunk, n - start), dim)
                if sample is None:
                    sample = block[: min(len(block), 200_000)].copy()
                idx.add(np.arange(start, start + len(block), dtype=np.int64), block)
            fill_s = time.perf_counter() - t0
            assert sample is not None
            q = _unit_rows(rng, queries, dim)
            lat = []
            for i in range(queries):
                _sync(torch, device)
                t1 = time.perf_counter()
                idx.search(q[i : i + 1], 10)
                _sync(torch, device)
                lat.append(time.perf_counter() - t1)
            lat = lat[2:]  # the first calls allocate
            batch_s = _timed(lambda idx=idx, q=q: idx.search(q[:64], 10), torch, device, seconds=1.0)
            # exactness: the same top-10 as FAISS CPU flat over the first block's templates
            sub = TorchIndex(
                dim, IndexConfig(engine="torch", storage=storage, device="gpu" if device == "cuda" else "cpu")
            )  # type: ignore[arg-type]
            sub.add(np.arange(len(sample), dtype=np.int64), sample)
            flat = faiss.IndexFlatIP(dim)
            flat.add(sample)
            _, fi = flat.search(q[:16], 10)
            _, ti = sub.search(q[:16], 10)
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(fi.tolist(), ti.tolist(), strict=True)]))
            row = {
                "templates": n,
                "storage": storage,
                "p50_ms": statistics.median(lat) * 1e3,
                "p90_ms": float(np.percentile(lat, 90)) * 1e3,
                "batch64_ms": batch_s * 1e3,
                "fill_s": fill_s,
                "gib": idx.memory_bytes() / 2**30,
                "recall_at_10_vs_faiss_cpu": recall,
                "checked_on": len(sample),
            }
            out.append(row)
            print(f"  search {storage} n={n:,}: p50 {row['p50_ms']:.3f} ms, recall@10 {recall:.3f}", flush=True)
            del idx, sub
            if device == "cuda":
                torch.cuda.empty_cache()
    gpu_faiss: dict[str, Any] = {"measured": False}
    from facematch.gallery.gpu_probe import faiss_gpu_probe

    probe = faiss_gpu_probe() if hasattr(faiss, "StandardGpuResources") else None
    if probe is None or not probe.usable:
        gpu_faiss["reason"] = probe.reason if probe is not None else "faiss has no GPU support (faiss-cpu)"
    else:
        n = sizes[0]
        x = _unit_rows(rng, n, dim)
        res = faiss.StandardGpuResources()
        g = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatIP(dim))
        g.add(x)
        q = _unit_rows(rng, 64, dim)
        lat = []
        for i in range(64):
            t1 = time.perf_counter()
            g.search(q[i : i + 1], 10)
            lat.append(time.perf_counter() - t1)
        gpu_faiss = {"measured": True, "templates": n, "p50_ms": statistics.median(lat[2:]) * 1e3}
    return {"torch": out, "faiss_gpu": gpu_faiss}


def environment(device: str) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(v, 1) for v in os.getloadavg()],
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_mem_gib=props.total_memory / 2**30,
            cuda=torch.version.cuda,
        )
    return env


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = ["# GPU check results", "", f"`{json.dumps(env)}`", "", f"Total time: {res['total_s']:.0f} s.", ""]
    lines += [
        "## Cosine to the ONNX model (ONNX Runtime CPU), celeb24 faces",
        "",
        "| precision | mode | faces | min cosine | mean cosine | passed (>= 0.999) |",
        "|---|---|---|---|---|---|",
    ]
    for c in res["embedding"]["cosine"]:
        lines.append(
            f"| {c['precision']} | {c['mode']} | {c['faces']} | {c['min_cosine']:.6f} | "
            f"{c['mean_cosine']:.6f} | {c['passed']} |"
        )
    lines += [
        "",
        "## Embedding throughput (network on device tensors)",
        "",
        "| precision | mode | batch | faces/s | ms/batch |",
        "|---|---|---|---|---|",
    ]
    for r in res["embedding"]["throughput"]:
        lines.append(
            f"| {r['precision']} | {r['mode']} | {r['batch']} | {_rate(r['faces_per_s'])} | {r['ms_per_batch']:.3f} |"
        )
    e = res["embedding"]["end_to_end"]
    lines += [
        "",
        f"End to end `embed()` from uint8 crops ({e['precision']}/{e['mode']}, batch {e['batch']}, host "
        f"preprocessing included): {_rate(e['faces_per_s'])} faces/s.",
        "",
    ]
    d = res["detector"]
    lines += [
        f"Detector on ONNX Runtime CPU ({d['threads']} cores): detect {d['detect_ms_median']:.1f} ms/image "
        f"(median of {d['images']} wild photos), largest_face (coarse-first) {d['largest_face_ms_median']:.1f} ms.",
        "",
        "## Search (TorchIndex, k=10)",
        "",
        "| templates | storage | p50 ms (1 query) | p90 ms | 64 queries ms | GiB | recall@10 vs FAISS CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in res["search"]["torch"]:
        lines.append(
            f"| {s['templates']:,} | {s['storage']} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | "
            f"{s['batch64_ms']:.2f} | {s['gib']:.2f} | {s['recall_at_10_vs_faiss_cpu']:.3f} "
            f"(on {s['checked_on']:,}) |"
        )
    fg = res["search"]["faiss_gpu"]
    lines += [
        "",
        "FAISS-GPU flat: "
        + (f"p50 {fg['p50_ms']:.3f} ms at {fg['templates']:,}" if fg["measured"] else f"not measured ({fg['reason']})"),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--out", type=Path, help="write a Markdown summary here (and the JSON beside it)")
    ap.add_argument("--seconds", type=float, default=None, help="time per throughput point")
    args = ap.parse_args()
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda, but torch {torch.__version__} sees no CUDA GPU")
    gpu = device == "cuda"
    if not gpu:  # on a shared CPU, torch's OpenMP threads spin against other jobs: 2 threads ran 10-50x slower
        torch.set_num_threads(1)
    seconds = args.seconds or (1.0 if gpu else 0.5)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"environment": environment(device)}
    print(f"device {device}: {res['environment']}", flush=True)
    crops = load_crops(256 if gpu else 12)
    print("embedding", flush=True)
    res["embedding"] = embedding_part(device, [1, 32, 256, 1024] if gpu else [1, 4], seconds, crops)
    print("detector (ONNX Runtime CPU)", flush=True)
    res["detector"] = detector_part(4.0 if gpu else 1.0)
    print("search", flush=True)
    res["search"] = search_part(
        device, [1_000_000, 10_000_000] if gpu else [20_000, 100_000], 512, 66 if gpu else 8, 1_000_000
    )
    res["total_s"] = time.perf_counter() - t0
    res["environment"]["load_average_at_end"] = [round(v, 1) for v in os.getloadavg()]
    res["passed"] = all(c["passed"] for c in res["embedding"]["cosine"]) and all(
        s["recall_at_10_vs_faiss_cpu"] >= (0.99 if s["storage"] == "fp16" else 1.0) for s in res["search"]["torch"]
    )
    text = markdown(res)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    if not res["passed"]:
        print("GPU check FAILED: a cosine or recall check is below its bar", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
