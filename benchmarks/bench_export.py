"""Export benchmark: fp32 vs int8 of the default embedder on CPU, and PyTorch fp16 + CUDA graphs on a GPU.

CPU part: quantises ``w600k_mbf.onnx`` with ``facematch.export.quantize`` (calibrated on 200 celeb24
faces, checked on the rest), then measures embedding throughput (faces/s, ONNX Runtime CPU) at
batch 1 and 32 for fp32 and int8, interleaving the two models round by round so that background
load hits both alike, and reports the accuracy change (mean/min cosine to fp32, TAR@FAR 1e-3).

GPU part (only where torch sees a CUDA GPU): ``w600k_mbf`` ported into the PyTorch MobileFaceNet,
fp16, channels-last, captured in a CUDA graph at batch 256; faces/s over timed replays. Without a
GPU the part is reported as unmeasured.

    python benchmarks/bench_export.py --celeb24 ../shared/data/celeb24 --out benchmarks/export_results.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from facematch.export.faces import load_faces
from facematch.export.runners import OnnxRunner

from facematch.model_files import load_card, resolve_model_path
from facematch.preprocess import to_blob


def cpu_throughput(runners: dict[str, OnnxRunner], x: np.ndarray, batch: int, seconds: float) -> dict[str, float]:
    """faces/s per runner at ``batch``, measured in interleaved rounds of ~``seconds``/5 each."""
    xb = np.ascontiguousarray(x[:batch])
    for r in runners.values():
        r.run(xb)  # warm-up
    done = dict.fromkeys(runners, 0)
    spent = dict.fromkeys(runners, 0.0)
    for _ in range(5):
        for name, r in runners.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds / 5:
                r.run(xb)
                done[name] += batch
            spent[name] += time.perf_counter() - t0
    return {k: done[k] / spent[k] for k in runners}


def gpu_part(batch: int = 256, iters: int = 200) -> dict[str, object]:
    """PyTorch fp16 + CUDA graph throughput of the ported w600k_mbf; ``{"measured": False}`` without a GPU."""
    try:
        import torch
    except ImportError:
        return {"measured": False, "reason": "torch not installed"}
    if not torch.cuda.is_available():
        return {"measured": False, "reason": "no CUDA GPU visible"}
    from facematch.export.backbones import build_backbone
    from facematch.export.port import port_onnx_weights

    src = resolve_model_path(load_card("w600k_mbf"))
    model = build_backbone("mbf_fc")
    port_onnx_weights(src, model)
    model = model.eval().half().cuda().to(memory_format=torch.channels_last)
    static_in = torch.randn(batch, 3, 112, 112, device="cuda").half().to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(5):
                model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_in)
        eager_t0 = time.perf_counter()
        for _ in range(20):
            model(static_in)
        torch.cuda.synchronize()
        eager = 20 * batch / (time.perf_counter() - eager_t0)
        t0 = time.perf_counter()
        for _ in range(iters):
            graph.replay()
        torch.cuda.synchronize()
        graphed = iters * batch / (time.perf_counter() - t0)
    assert static_out.shape == (batch, 512)
    return {
        "measured": True,
        "device": torch.cuda.get_device_name(0),
        "batch": batch,
        "eager_fp16_faces_per_s": round(eager),
        "cuda_graph_fp16_faces_per_s": round(graphed),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--celeb24", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/celeb24")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per model and batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from facematch.export.quantize import quantize_int8

    card = load_card("w600k_mbf")
    src = resolve_model_path(card)
    faces = load_faces(args.celeb24)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = quantize_int8(src, Path(tmp, "w600k_int8.onnx"), args.celeb24, calib_count=200, faces=faces, force=True)
        quant_s = time.perf_counter() - t0
        runners = {
            "fp32": OnnxRunner(src, card, threads=args.threads),
            "int8": OnnxRunner(res.path, res.card, threads=args.threads),
        }
        x = to_blob(faces.crops[:32], card.input)
        speed = {b: cpu_throughput(runners, x, b, args.seconds) for b in (1, 32)}
    rep = res.report
    gpu = gpu_part()
    lines = [
        "# Export benchmark (bench_export.py)",
        "",
        f"Machine: {platform.machine()} {os.cpu_count()}-core CPU (`{platform.processor() or 'cpu'}`), no GPU, "
        "shared with other jobs during measurement; fp32 and int8 were timed in interleaved rounds in one run, "
        f"so compare the ratio. ONNX Runtime CPU, {args.threads} threads.",
        "",
        "## CPU: w600k_mbf fp32 vs int8 (ONNX Runtime static QDQ, `export quantize` defaults)",
        "",
        "| batch | fp32 faces/s | int8 faces/s | int8 / fp32 |",
        "|---|---|---|---|",
    ]
    for b, s in speed.items():
        lines.append(f"| {b} | {s['fp32']:.1f} | {s['int8']:.1f} | {s['int8'] / s['fp32']:.2f} |")
    tar = rep.tar
    lines += [
        "",
        f"Accuracy of int8 against fp32 on {rep.n_images} celeb24 faces not used for calibration "
        f"(200 calibration faces; quantisation took {quant_s:.0f} s; "
        f"{res.card.export['options']['quantized_convs'] if res.card.export else '?'} convs quantised):",
        "",
        "| check | n | min cosine | mean cosine |",
        "|---|---|---|---|",
    ]
    for c in rep.checks:
        lines.append(f"| {c.name} @ batch {c.batch} | {c.n} | {c.min_cos:.6f} | {c.mean_cos:.6f} |")
    if tar and tar.resolvable and tar.delta is not None:
        lines += [
            "",
            f"TAR@FMR {tar.fmr:g}: fp32 {tar.tar_reference:.4f} → int8 {tar.tar_candidate:.4f} "
            f"({tar.delta:+.4f}; {tar.n_genuine} genuine / {tar.n_impostor} impostor pairs).",
        ]
    lines += [
        "",
        f"Verdict against the int8 bar (min cosine ≥ 0.99 on faces): **{'PASS' if rep.passed else 'FAIL'}**.",
        "",
        "## GPU: PyTorch fp16 + CUDA graphs, batch 256",
        "",
    ]
    if gpu.get("measured"):
        lines.append(
            f"{gpu['device']}: eager fp16 {gpu['eager_fp16_faces_per_s']} faces/s, "
            f"CUDA graph fp16 {gpu['cuda_graph_fp16_faces_per_s']} faces/s (batch {gpu['batch']})."
        )
    else:
        lines.append(f"Unmeasured: {gpu['reason']} on this machine (the code path is `gpu_part()` in this script).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
