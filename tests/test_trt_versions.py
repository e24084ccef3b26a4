"""export trt against stand-in ``tensorrt`` modules shaped like 10.x and 11.x (no GPU, no TensorRT here).

10.x has ``BuilderFlag.FP16/INT8``, ``IInt8EntropyCalibrator2``, ``int8_calibrator``,
``set_calibration_profile`` and ``platform_has_fast_*``; 11.x has none of them.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest
from facematch.export.trt import (
    TrtRunner,
    batch_plan,
    calibration_batches,
    check_platform,
    configure_builder,
    trt_api,
)

from facematch.cards import ModelCard
from facematch.errors import BackendUnavailableError, InvalidArgumentError, ModelError
from facematch.model_files import load_card

torch = pytest.importorskip("torch")


def stub_trt(version: str) -> Any:
    major = int(version.split(".")[0])
    m = types.ModuleType("tensorrt")
    m.__version__ = version  # type: ignore[attr-defined]
    flags: dict[str, str] = {"TF32": "TF32"}
    if major < 11:
        flags.update(FP16="FP16", INT8="INT8")

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        m.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2  # type: ignore[attr-defined]
    m.BuilderFlag = types.SimpleNamespace(**flags)  # type: ignore[attr-defined]
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
    m.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    m.Logger = Logger  # type: ignore[attr-defined]
    return m


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, ...]] = {}

    def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
        self.shapes[name] = shapes


class _Config:
    def __init__(self, v10: bool) -> None:
        self.flags: list[str] = []
        self.profiles: list[_Profile] = []
        self.pool: dict[str, int] = {}
        self.calibration_profile: _Profile | None = None
        if v10:
            self.int8_calibrator = None
            self.set_calibration_profile = lambda p: setattr(self, "calibration_profile", p)

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pool[pool] = size

    def add_optimization_profile(self, profile: _Profile) -> None:
        self.profiles.append(profile)

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)


class _Builder:
    def __init__(self, v10: bool, fp16: bool = True, int8: bool = True) -> None:
        self._v10 = v10
        if v10:
            self.platform_has_fast_fp16 = fp16
            self.platform_has_fast_int8 = int8

    def create_builder_config(self) -> _Config:
        return _Config(self._v10)

    def create_optimization_profile(self) -> _Profile:
        return _Profile()


_NETWORK = types.SimpleNamespace(get_input=lambda i: types.SimpleNamespace(name="input"))


def test_version_branches() -> None:
    assert trt_api(stub_trt("10.16.1.11")).precisions == ("fp32", "fp16", "int8")
    eleven = trt_api(stub_trt("11.4.0.106"))
    assert eleven.precisions == ("fp32",)
    eleven.check_precision("fp32")
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 11\.4\.0\.106 cannot build --precision fp16"):
        eleven.check_precision("fp16")
    for old_or_new in ("8.6.1", "12.0.0"):
        with pytest.raises(BackendUnavailableError, match=r"10\.x and 11\.x"):
            trt_api(stub_trt(old_or_new))
    broken = stub_trt("10.3.0")
    broken.BuilderFlag = types.SimpleNamespace()
    with pytest.raises(BackendUnavailableError, match="lacks"):
        trt_api(broken)


def test_builder_config_on_10x() -> None:
    trt = stub_trt("10.16.1.11")
    cfg, used = configure_builder(
        trt, _Builder(True), _NETWORK, precision="fp16", shape=(3, 112, 112), batches=(1, 8, 16), workspace_gib=1
    )
    assert cfg.flags == ["FP16"] and used is None and cfg.pool["WORKSPACE"] == 1 << 30
    assert cfg.profiles[0].shapes["input"] == ((1, 3, 112, 112), (8, 3, 112, 112), (16, 3, 112, 112))
    calib = types.SimpleNamespace(get_batch_size=lambda: 8, count=64)
    cfg, used = configure_builder(
        trt, _Builder(True), _NETWORK, precision="int8", shape=(3, 112, 112), batches=(1, 8, 16),
        workspace_gib=1, calibrator=calib,
    )  # fmt: skip
    assert cfg.flags == ["FP16", "INT8"] and cfg.int8_calibrator is calib
    assert cfg.calibration_profile is cfg.profiles[0]
    assert used == {"count": 64, "batch": 8, "calibrator": "IInt8EntropyCalibrator2"}
    wrong = types.SimpleNamespace(get_batch_size=lambda: 32, count=64)  # the old min(opt, 32) batches
    with pytest.raises(InvalidArgumentError, match="opt batch"):
        configure_builder(
            trt, _Builder(True), _NETWORK, precision="int8", shape=(3, 112, 112), batches=(1, 8, 16),
            workspace_gib=1, calibrator=wrong,
        )  # fmt: skip


def test_builder_config_on_11x() -> None:
    trt = stub_trt("11.4.0.106")
    cfg, used = configure_builder(
        trt, _Builder(False), _NETWORK, precision="fp32", shape=(3, 112, 112), batches=(1, 32, 256), workspace_gib=4
    )
    assert cfg.flags == [] and used is None and not hasattr(cfg, "int8_calibrator")
    for precision in ("fp16", "int8"):
        with pytest.raises(BackendUnavailableError, match="TensorRT 11"):
            configure_builder(
                trt, _Builder(False), _NETWORK, precision=precision, shape=(3, 112, 112), batches=(1, 32, 256),
                workspace_gib=4,
            )  # fmt: skip


def test_platform_checks() -> None:
    with pytest.raises(InvalidArgumentError, match="fast fp16"):
        check_platform(_Builder(True, fp16=False), "fp16")
    with pytest.raises(InvalidArgumentError, match="fast int8"):
        check_platform(_Builder(True, int8=False), "int8")
    check_platform(_Builder(True, fp16=False), "fp32")
    check_platform(_Builder(False), "fp32")  # 11.x has no platform_has_fast_* at all


def test_calibration_batches_follow_the_opt_batch() -> None:
    x = np.zeros((40, 3, 112, 112), np.float32)
    batches = calibration_batches(x, 16)
    assert [len(b) for b in batches] == [16, 16]
    assert [len(b) for b in calibration_batches(x, 64 // 4)] == [16, 16]
    with pytest.raises(InvalidArgumentError, match="at least 64"):
        calibration_batches(x, 64)


# ---- the runner: any batch inside a narrow profile -----------------------------------------------
class _Context:
    def __init__(self, lo: int, hi: int, dim: int, refuse: bool = False) -> None:
        self.lo, self.hi, self.dim, self.refuse = lo, hi, dim, refuse
        self.shapes: list[tuple[int, ...]] = []
        self._batch = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        ok = not self.refuse and self.lo <= shape[0] <= self.hi
        if ok:
            self.shapes.append(shape)
            self._batch = shape[0]
        return ok  # TensorRT 10 returns False (and logs) for a shape outside the profile

    def set_tensor_address(self, name: str, ptr: int) -> None:
        pass

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self._batch, self.dim)

    def execute_async_v3(self, stream: int) -> bool:
        return True


class _Engine:
    num_io_tensors = 2

    def __init__(self, context: _Context) -> None:
        self._context = context

    def create_execution_context(self) -> _Context:
        return self._context

    def get_tensor_name(self, i: int) -> str:
        return ["input", "embedding"][i]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == "input" else "out"

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        c = self._context
        return (c.lo, 3, 112, 112), (c.hi, 3, 112, 112), (c.hi, 3, 112, 112)


def _runner(context: _Context) -> TrtRunner:
    trt = stub_trt("10.16.1.11")
    trt.Runtime = lambda log: types.SimpleNamespace(deserialize_cuda_engine=lambda b: _Engine(context))
    card: ModelCard = load_card("w600k_mbf")
    return TrtRunner(b"engine", card, modules=(trt, torch), device="cpu")


def test_runner_splits_and_pads_to_the_profile() -> None:
    assert list(batch_plan(20, 1, 8)) == [(0, 8, 8), (8, 16, 8), (16, 20, 4)]
    assert list(batch_plan(1, 4, 8)) == [(0, 1, 4)]
    ctx = _Context(lo=2, hi=8, dim=512)
    runner = _runner(ctx)
    assert (runner.min_batch, runner.max_batch, runner.fixed_batch) == (2, 8, None)
    for n in (32, 1, 7):  # the batches validation runs at, on a profile narrower than 32
        ctx.shapes.clear()
        emb, norm = runner.run(np.zeros((n, 3, 112, 112), np.float32))
        assert emb.shape == (n, 512) and norm is None
        assert all(2 <= s[0] <= 8 for s in ctx.shapes) and sum(s[0] for s in ctx.shapes) >= n
    fixed = _runner(_Context(lo=4, hi=4, dim=512))
    assert fixed.fixed_batch == 4


def test_a_refused_shape_is_a_clear_error() -> None:
    runner = _runner(_Context(lo=1, hi=8, dim=512, refuse=True))
    with pytest.raises(ModelError, match=r"profile takes batch 1\.\.8"):
        runner.run(np.zeros((3, 3, 112, 112), np.float32))
