"""Provider truth and provider options, without a GPU.

ONNX Runtime falls back to CPU when a provider's libraries cannot load, while
``get_available_providers()`` still lists it. A stand-in ``onnxruntime`` module whose
sessions report fewer providers than were requested shows what facematch does then.
The real CPU ONNX Runtime checks the happy path on the real pack model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from facematch import runtime
from facematch.errors import InvalidArgumentError, ProviderUnavailableError
from facematch.model_files import load_card, resolve_model_path
from facematch.runtime import (
    CPU,
    CUDA,
    TENSORRT,
    RuntimeOptions,
    create_session,
    provider_options,
    shape_profile,
    split_torch_providers,
)


class _FakeSession:
    def __init__(self, active: list[str]) -> None:
        self._active = active

    def get_providers(self) -> list[str]:
        return list(self._active)


class _FakeOrt:
    """onnxruntime as a GPU wheel with missing CUDA libraries looks: CUDA listed, CPU running."""

    def __init__(self, available: list[str], runs: list[str]) -> None:
        import onnxruntime

        self._available, self._runs = available, runs
        self.SessionOptions = onnxruntime.SessionOptions
        self.GraphOptimizationLevel = onnxruntime.GraphOptimizationLevel
        self.calls: list[dict[str, Any]] = []
        self.preloads = 0

    def get_available_providers(self) -> list[str]:
        return list(self._available)

    def preload_dlls(self, **_: Any) -> None:
        self.preloads += 1

    def InferenceSession(self, data: Any, **kwargs: Any) -> _FakeSession:
        self.calls.append(kwargs)
        return _FakeSession(self._runs)


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> _FakeOrt:
    fake = _FakeOrt([TENSORRT, CUDA, CPU], [CPU])
    monkeypatch.setattr(runtime, "_ort", lambda: fake)
    monkeypatch.setattr(runtime, "_preloaded", False)
    monkeypatch.setattr(runtime, "_warned", set())
    monkeypatch.delenv("FACEMATCH_PROVIDERS", raising=False)
    monkeypatch.setenv("FACEMATCH_TRT_CACHE_DIR", str(tmp_path / "trt"))
    return fake


def _model(tmp_path: Path, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(b"not parsed by the fake runtime")
    return path


def test_an_explicit_provider_that_did_not_load_raises(fake_ort: _FakeOrt, tmp_path: Path) -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        create_session(_model(tmp_path), providers=["cuda"])
    err = info.value
    assert err.code == "provider_unavailable" and err.http_status == 501
    assert err.details["requested"] == [CUDA] and err.details["active"] == [CPU]
    assert "CUDAExecutionProvider" in err.message and "docs/gpu.md" in err.message
    assert fake_ort.preloads == 1  # the pip CUDA libraries were offered first


def test_the_env_var_counts_as_an_explicit_request(
    fake_ort: _FakeOrt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEMATCH_PROVIDERS", "cuda,cpu")
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        create_session(_model(tmp_path))
    monkeypatch.setenv("FACEMATCH_PROVIDERS", "cpu")
    assert create_session(_model(tmp_path)).get_providers() == [CPU]


def test_the_default_preference_warns_once_per_model(
    fake_ort: _FakeOrt, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="facematch.runtime")
    for _ in range(3):
        assert create_session(_model(tmp_path, "det.onnx")).get_providers() == [CPU]
    create_session(_model(tmp_path, "emb.onnx"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per model, not one per session
    assert "det.onnx" in warnings[0].getMessage() and "emb.onnx" in warnings[1].getMessage()
    assert "TensorrtExecutionProvider" in warnings[0].getMessage()
    # what was asked for, with the options of each provider
    call = fake_ort.calls[0]
    assert call["providers"] == [TENSORRT, CUDA, CPU]
    trt, cuda, cpu = call["provider_options"]
    assert trt["trt_engine_cache_enable"] == "True" and cuda["cudnn_conv_algo_search"] == "HEURISTIC" and cpu == {}
    assert (tmp_path / "trt").is_dir()  # the engine cache directory exists before TensorRT writes to it


def test_a_partial_fallback_is_caught_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """TensorRT missing (no libnvinfer.so.10) while CUDA loads: running on CUDA is still not what was asked."""
    fake = _FakeOrt([TENSORRT, CUDA, CPU], [CUDA, CPU])
    monkeypatch.setattr(runtime, "_ort", lambda: fake)
    monkeypatch.setattr(runtime, "_preloaded", True)
    monkeypatch.setenv("FACEMATCH_TRT_CACHE_DIR", str(tmp_path / "trt"))
    monkeypatch.delenv("FACEMATCH_PROVIDERS", raising=False)
    with pytest.raises(ProviderUnavailableError, match=r"\['TensorrtExecutionProvider'\] failed to load"):
        create_session(_model(tmp_path), providers=["tensorrt", "cuda", "cpu"])
    assert create_session(_model(tmp_path), providers=["cuda", "cpu"]).get_providers() == [CUDA, CPU]


def test_real_cpu_runtime_reports_what_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEMATCH_PROVIDERS", raising=False)
    card = load_card("w600k_mbf")
    sess = create_session(resolve_model_path(card), providers=["cpu"], card=card)
    assert sess.get_providers() == [CPU]


def test_torch_names_are_routed_not_passed_to_onnx_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEMATCH_PROVIDERS", raising=False)
    assert split_torch_providers(None) == (None, None)
    assert split_torch_providers(["torch-cuda"]) == ("cuda", None)
    assert split_torch_providers(["torch-cpu", "cpu"]) == ("cpu", ["cpu"])
    assert split_torch_providers(["cuda"]) == (None, ["cuda"])
    monkeypatch.setenv("FACEMATCH_PROVIDERS", "torch-cuda,cpu")
    assert split_torch_providers(None) == ("cuda", ["cpu"])
    with pytest.raises(InvalidArgumentError, match="not"):
        split_torch_providers(["torch-cuda", "torch-cpu"])
    with pytest.raises(InvalidArgumentError, match="PyTorch embedder runtime"):
        runtime.choose_providers(["torch-cuda"])


# ---- provider options --------------------------------------------------------------------------
def test_options_dicts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FACEMATCH_TRT_FP16", "FACEMATCH_TRT_DET_MAX_SIDE", "FACEMATCH_CUDA_CONV_SEARCH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FACEMATCH_TRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FACEMATCH_CUDA_DEVICE", "1")
    opts = RuntimeOptions.from_env()
    det = shape_profile(load_card("scrfd_500m_bnkps"), "input.1", options=opts)
    emb = shape_profile(load_card("w600k_mbf"), "input.1", max_batch=32, options=opts)
    assert det is not None and emb is not None
    # the detector sees 1x3xHxW with H, W multiples of 32 up to the card's 640; the embedder batches 1..32
    assert (det.min, det.opt, det.max) == ((1, 3, 32, 32), (1, 3, 640, 640), (1, 3, 640, 640))
    assert (emb.min, emb.opt, emb.max) == ((1, 3, 112, 112), (32, 3, 112, 112), (32, 3, 112, 112))
    trt, cuda, cpu = provider_options([TENSORRT, CUDA, CPU], emb, opts)
    assert trt == {
        "device_id": "1",
        "trt_fp16_enable": "True",
        "trt_max_workspace_size": str(2 << 30),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / "cache"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path / "cache"),
        "trt_profile_min_shapes": "input.1:1x3x112x112",
        "trt_profile_opt_shapes": "input.1:32x3x112x112",
        "trt_profile_max_shapes": "input.1:32x3x112x112",
    }
    assert cuda == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC"} and cpu == {}
    monkeypatch.setenv("FACEMATCH_TRT_FP16", "0")
    monkeypatch.setenv("FACEMATCH_TRT_DET_MAX_SIDE", "1000")  # rounded up to the detector's multiple
    monkeypatch.setenv("FACEMATCH_CUDA_CONV_SEARCH", "exhaustive")
    opts = RuntimeOptions.from_env()
    det = shape_profile(load_card("scrfd_500m_bnkps"), "x", options=opts)
    assert det is not None and det.max == (1, 3, 1024, 1024) and det.option("max") == "x:1x3x1024x1024"
    trt, cuda = provider_options([TENSORRT, CUDA], det, opts)
    assert trt["trt_fp16_enable"] == "False" and trt["trt_profile_max_shapes"] == "x:1x3x1024x1024"
    assert cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"


def test_bad_option_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (
        ("FACEMATCH_TRT_FP16", "maybe"),
        ("FACEMATCH_CUDA_CONV_SEARCH", "fastest"),
        ("FACEMATCH_TRT_WORKSPACE_GIB", "lots"),
        ("FACEMATCH_CUDA_DEVICE", "-1"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(InvalidArgumentError, match=name):
            RuntimeOptions.from_env()
        monkeypatch.delenv(name)
    RuntimeOptions.from_env()
