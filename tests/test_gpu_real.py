"""The GPU paths on a real GPU (``pytest -m gpu``): ONNX Runtime's CUDA provider, the torch embedder
and the torch flat index on CUDA, FAISS-GPU; each against its CPU oracle. Skipped, with the reason,
where the GPU or the GPU build of a package is absent (every CI machine of this project);
``benchmarks/gpu_check.sh`` measures the same paths."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from _gallery_util import unit

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def crops(celeb24_dir: Path) -> np.ndarray:
    files = sorted(p for p in celeb24_dir.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return np.stack([cv2.imread(str(p)) for p in files[:: max(1, len(files) // 64)][:64]])


def _cuda_torch():  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA GPU")
    return torch


def test_onnx_runtime_cuda_provider_matches_cpu(matcher, crops: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    from facematch import FaceMatcher
    from facematch.runtime import available_providers

    if "CUDAExecutionProvider" not in available_providers():
        pytest.skip(f"ONNX Runtime has no CUDA provider here ({available_providers()})")
    gpu = FaceMatcher(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "CUDAExecutionProvider" in gpu.providers["embedder"]  # explicit: it refuses to fall back silently
    ref, _ = matcher.embedder.embed(crops)
    got, _ = gpu.embedder.embed(crops)
    assert np.sum(ref * got, axis=1).min() >= 0.999


def test_torch_embedder_on_cuda_matches_onnx_runtime(matcher, crops: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    _cuda_torch()
    from facematch.zoo.torch_embedder import TorchEmbedder

    ref, _ = matcher.embedder.embed(crops)
    for precision in ("fp32", "fp16"):
        emb = TorchEmbedder.load("w600k_mbf", device="cuda", precision=precision, max_batch=32)
        got, _ = emb.embed(crops)
        assert np.sum(ref * got, axis=1).min() >= 0.999, precision


def test_torch_index_on_cuda_is_exact_against_numpy() -> None:
    _cuda_torch()
    from facematch.gallery.config import IndexConfig
    from facematch.gallery.torch_index import TorchIndex

    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((50_000, 512)))
    q = unit(x[:200] + 0.5 * rng.standard_normal((200, 512)))
    index = TorchIndex(512, IndexConfig(engine="torch", device="gpu"))
    index.add(np.arange(1, x.shape[0] + 1), x)
    scores, ids = index.search(q, 10)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10] + 1
    assert np.mean(ids[:, 0] == truth[:, 0]) == 1.0
    np.testing.assert_allclose(scores[:, 0], np.max(q @ x.T, axis=1), atol=1e-4)


def test_faiss_gpu_flat_and_ivf_against_numpy() -> None:
    pytest.importorskip("faiss")
    from facematch.gallery.config import IndexConfig
    from facematch.gallery.gpu_probe import faiss_gpu_probe
    from facematch.gallery.index import FaissIndex

    probe = faiss_gpu_probe()
    if not probe.usable:
        pytest.skip(f"FAISS-GPU is not usable here: {probe.reason}")
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((20_000, 512)))
    q = unit(x[:200] + 0.5 * rng.standard_normal((200, 512)))
    truth = np.argmax(q @ x.T, axis=1) + 1
    for cfg in (IndexConfig(device="gpu"), IndexConfig(kind="ivf", nprobe=64, min_train=1, device="gpu")):
        index = FaissIndex(512, cfg)
        index.add(np.arange(1, x.shape[0] + 1), x)
        assert index.wait_for_gpu(120) and index.on_gpu, cfg.describe()
        _, ids = index.search(q, 10)
        assert np.mean(ids[:, 0] == truth) >= (1.0 if cfg.kind == "flat" else 0.9), cfg.describe()
