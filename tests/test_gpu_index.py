"""FAISS-GPU without a GPU: the subprocess probe, the open-time refusals, and the incremental mirror.

The probe runs real child processes (one that aborts as FAISS-GPU does on "no kernel image",
one that reports facts). The mirror runs on real FAISS CPU indexes standing in for GPU copies
(``index_cpu_to_gpu`` → ``clone_index``), checked against exact brute force after every change.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from _gallery_util import unit

from facematch.errors import BackendUnavailableError, InvalidArgumentError
from facematch.gallery import gpu_probe
from facematch.gallery.config import IndexConfig
from facematch.gallery.gpu_probe import Architectures, GpuProbe, compiled_architectures, library_architectures
from facematch.gallery.index import FaissIndex, decide_gpu, gpu_unsupported

faiss = pytest.importorskip("faiss")


# ---- compiled architectures ---------------------------------------------------------------------
def _fatbin(entries: list[tuple[int, int]]) -> bytes:
    """A fat binary container as nvcc lays it out: header, then (kind, sm) entries with payloads."""
    body = b""
    for kind, sm in entries:
        payload = b"\0" * 24
        header = struct.pack("<HHIQ", kind, 0x101, 64, len(payload))
        header += struct.pack("<IIHHI", len(payload), 0, 7, 1, sm) + b"\0" * 32
        body += header + payload
    return struct.pack("<IHHQ", gpu_probe.FATBIN_MAGIC, 1, 16, len(body)) + body


def _elf_with_section(name: str, data: bytes) -> bytes:
    """A minimal 64-bit little-endian ELF holding one named section (plus the null and name sections)."""
    names = b"\0" + name.encode() + b"\0.shstrtab\0"
    data_off = 64
    names_off = data_off + len(data)
    shoff = names_off + len(names)
    shoff += (-shoff) % 8
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", head, 0x28, shoff)
    struct.pack_into("<HHH", head, 0x3A, 64, 3, 2)
    sections = [
        struct.pack("<IIQQQQ", 0, 0, 0, 0, 0, 0) + b"\0" * 24,
        struct.pack("<IIQQQQ", 1, 1, 0, 0, data_off, len(data)) + b"\0" * 24,
        struct.pack("<IIQQQQ", 1 + len(name) + 1, 3, 0, 0, names_off, len(names)) + b"\0" * 24,
    ]
    blob = bytes(head) + data + names
    return blob + b"\0" * (shoff - len(blob)) + b"".join(sections)


def test_fatbin_architectures_are_read_from_the_library_file(tmp_path: Path) -> None:
    # faiss-gpu 1.15.1's libfaiss.so carries sm_70..sm_90 cubins + compute_90 PTX (read the same way)
    good = tmp_path / "libfaiss.so"
    entries = [(2, 70), (2, 75), (2, 80), (2, 86), (2, 89), (1, 90), (2, 90)]
    good.write_bytes(_elf_with_section(".nv_fatbin", _fatbin(entries) + b"\0" * 8 + _fatbin(entries)))
    archs = library_architectures(good)
    assert archs.describe() == "sm_70, sm_75, sm_80, sm_86, sm_89, sm_90, compute_90"
    assert archs.runs_on((9, 0)) and archs.runs_on((8, 9)) and archs.runs_on((12, 0))  # Blackwell: PTX JIT
    assert not archs.runs_on((6, 1))
    # faiss-gpu-cu12 1.14.1.post1: sm_70/sm_80, no PTX: no kernel image for Hopper
    old = tmp_path / "libold.so"
    old.write_bytes(_elf_with_section(".nv_fatbin", _fatbin([(2, 70), (2, 80)])))
    old_archs = library_architectures(old)
    assert old_archs.runs_on((8, 6)) and not old_archs.runs_on((9, 0))
    assert compiled_architectures([good, old]).describe().endswith("compute_90")
    plain = tmp_path / "libplain.so"
    plain.write_bytes(_elf_with_section(".text", b"\0" * 64))
    assert not library_architectures(plain).known
    (tmp_path / "junk.so").write_bytes(b"not an elf")
    assert not library_architectures(tmp_path / "junk.so").known


def test_installed_cpu_faiss_has_no_gpu_code() -> None:
    assert gpu_probe.faiss_libraries(), "the installed faiss package has shared libraries"
    assert not compiled_architectures().known


# ---- the subprocess probe -----------------------------------------------------------------------
def test_probe_survives_a_faiss_gpu_abort() -> None:
    """The child prints its device facts, then aborts like FAISS-GPU on 'no kernel image'."""
    script = (
        "import json, os, sys; print(json.dumps({'gpus': 1, 'cc': [9, 0]}), flush=True); "
        "sys.stderr.write('CUDA error 209 no kernel image is available for execution on the device\\n'); "
        "sys.stderr.flush(); os.abort()"
    )
    probe = gpu_probe.run_probe([sys.executable, "-c", script], architectures=Architectures())
    assert not probe.usable and probe.gpus == 1 and probe.compute_capability == (9, 0)
    assert "SIGABRT" in probe.reason and "no kernel image" in probe.reason


def test_probe_refuses_a_gpu_the_wheel_has_no_code_for() -> None:
    report = "import json; print(json.dumps({'gpus': 1, 'cc': [9, 0]})); print(json.dumps({'search': True}))"
    old = Architectures(frozenset({(7, 0), (8, 0)}))
    probe = gpu_probe.run_probe([sys.executable, "-c", report], architectures=old)
    assert not probe.usable and "9.0" in probe.reason and "sm_70, sm_80" in probe.reason
    new = Architectures(frozenset({(7, 0), (8, 0), (9, 0)}), frozenset({(9, 0)}))
    assert gpu_probe.run_probe([sys.executable, "-c", report], architectures=new).usable


def test_probe_failure_modes() -> None:
    archs = Architectures()
    nogpu = gpu_probe.run_probe([sys.executable, "-c", "print('{\"gpus\": 0}')"], architectures=archs)
    assert not nogpu.usable and "no GPU" in nogpu.reason
    crash = gpu_probe.run_probe([sys.executable, "-c", "raise SystemExit(3)"], architectures=archs)
    assert not crash.usable and "exit 3" in crash.reason
    wrong = "import json; print(json.dumps({'gpus': 1, 'cc': [8, 0]})); print(json.dumps({'search': False}))"
    assert "disagreed" in gpu_probe.run_probe([sys.executable, "-c", wrong], architectures=archs).reason
    hang = gpu_probe.run_probe([sys.executable, "-c", "import time; time.sleep(30)"], architectures=archs, timeout_s=1)
    assert not hang.usable and "did not finish" in hang.reason
    missing = gpu_probe.run_probe(["/nonexistent/python"], architectures=archs)
    assert not missing.usable and "could not start" in missing.reason


def test_real_probe_script_on_cpu_faiss_reports_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gpu_probe.PROBE_ENV, raising=False)
    gpu_probe.reset_probe_cache()
    try:
        probe = gpu_probe.faiss_gpu_probe()
        assert not probe.usable and probe.gpus == 0
        assert gpu_probe.faiss_gpu_probe() is probe  # once per process
    finally:
        gpu_probe.reset_probe_cache()


# ---- refusals at open -----------------------------------------------------------------------------
def test_gpu_structures_are_checked_at_open(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_unsupported(IndexConfig()) is None
    assert gpu_unsupported(IndexConfig(kind="ivf", storage="sq8")) is None
    assert "flat sq8" in (gpu_unsupported(IndexConfig(storage="sq8")) or "")
    assert "flat fp16" in (gpu_unsupported(IndexConfig(storage="fp16")) or "")
    assert "HNSW" in (gpu_unsupported(IndexConfig(kind="hnsw")) or "")
    assert "2048" in (gpu_unsupported(IndexConfig(kind="ivf", nprobe=4096)) or "")
    fake = _FakeGpuFaiss(faiss)
    _usable(monkeypatch, True)
    # device='gpu' with a structure FAISS-GPU cannot hold fails when the index opens, not at the
    # 2048th template (when SQ8 is trained and the old code first tried to clone it)
    with pytest.raises(InvalidArgumentError, match="flat sq8"):
        decide_gpu(fake, IndexConfig(storage="sq8", device="gpu"))
    with pytest.raises(InvalidArgumentError, match="nprobe=4096"):
        decide_gpu(fake, IndexConfig(kind="ivf", nprobe=4096, device="gpu"))
    assert decide_gpu(fake, IndexConfig(storage="sq8")) is False  # auto: CPU
    assert decide_gpu(fake, IndexConfig(device="gpu")) is True
    assert decide_gpu(fake, IndexConfig(device="cpu")) is False
    # no GPU code in the build (faiss-cpu): device='gpu' says so
    with pytest.raises(BackendUnavailableError, match="faiss-cpu"):
        FaissIndex(16, IndexConfig(device="gpu"))
    # a failing probe: auto uses the CPU, gpu raises with the probe's reason
    _usable(monkeypatch, False)
    assert decide_gpu(fake, IndexConfig()) is False
    with pytest.raises(BackendUnavailableError, match="killed the probe"):
        decide_gpu(fake, IndexConfig(device="gpu"))


# ---- the incremental mirror ---------------------------------------------------------------------
class _FakeGpuFaiss:
    """The installed FAISS whose "GPU" copies are CPU clones (counted)."""

    def __init__(self, real: object, fail: bool = False) -> None:
        self._real = real
        self.clones = 0
        self.fail = fail

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def StandardGpuResources(self) -> object:
        return object()

    def index_cpu_to_gpu(self, _res: object, _dev: int, index: object) -> object:
        self.clones += 1
        if self.fail:
            raise RuntimeError("Error: 'false' failed: This index type is not implemented on GPU")
        return faiss.clone_index(index)

    def GpuParameterSpace(self) -> object:
        return faiss.ParameterSpace()


def _usable(monkeypatch: pytest.MonkeyPatch, ok: bool) -> None:
    probe = GpuProbe(ok, "ok" if ok else "FAISS-GPU killed the probe process (SIGABRT)", gpus=1)
    monkeypatch.setattr("facematch.gallery.index.faiss_gpu_probe", lambda: probe)


def _gpu_index(monkeypatch: pytest.MonkeyPatch, config: IndexConfig, dim: int) -> tuple[FaissIndex, _FakeGpuFaiss]:
    fake = _FakeGpuFaiss(faiss)
    monkeypatch.setattr("facematch.gallery.index.import_faiss", lambda: fake)
    _usable(monkeypatch, True)
    idx = FaissIndex(dim, config)
    assert idx.wait_for_gpu(10)
    return idx, fake


def _exact(ids: np.ndarray, x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]
    return ids[order]


@pytest.mark.parametrize("config", [IndexConfig(), IndexConfig(kind="ivf", nlist=8, nprobe=8, min_train=256)])
def test_mirror_adds_in_place_and_removes_off_the_request_path(monkeypatch: pytest.MonkeyPatch, config) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    dim = 32
    x = unit(rng.standard_normal((3000, dim)))
    ids = np.arange(x.shape[0], dtype=np.int64) * 5 + 11
    q = unit(x[rng.choice(x.shape[0], 20, replace=False)] + 0.3 * rng.standard_normal((20, dim)))
    idx, fake = _gpu_index(monkeypatch, config, dim)
    idx.rebuild(ids[:1000], x[:1000])  # the trained structure (IVF) on the first 1000
    assert idx.wait_for_gpu(10) and idx.on_gpu
    base = fake.clones
    for start in range(1000, 3000, 500):  # adds go into the mirror in place: no new copy
        idx.add(ids[start : start + 500], x[start : start + 500])
    assert fake.clones == base and idx.on_gpu
    live = np.ones(x.shape[0], bool)

    def check() -> None:
        scores, got = idx.search(q, 5)
        if config.kind == "flat":  # exact: the same ids as brute force over the live templates
            np.testing.assert_array_equal(got, _exact(ids[live], x[live], q, 5))
        assert not np.isin(got, ids[~live]).any()
        assert np.all(np.diff(scores, axis=1) <= 1e-6)

    check()
    # a few removals are tombstoned on the mirror: no copy, results still exact
    gone = rng.choice(x.shape[0], 40, replace=False)
    idx.remove(ids[gone])
    live[gone] = False
    assert fake.clones == base and idx.on_gpu
    check()
    # many removals: a fresh copy is made in the background while the old one keeps answering
    many = rng.choice(np.flatnonzero(live), 600, replace=False)
    idx.remove(ids[many])
    live[many] = False
    check()
    assert idx.wait_for_gpu(10) and fake.clones == base + 1
    check()
    idx.add(ids[gone[:5]], x[gone[:5]])  # removed before that copy: added in place
    live[gone[:5]] = True
    check()
    assert fake.clones == base + 1
    back = np.flatnonzero(live)[:3]
    idx.remove(ids[back])  # tombstoned on the copy ...
    live[back] = False
    check()
    idx.add(ids[back], x[back])  # ... and back: the stale copy is dropped (CPU answers) and copied again
    live[back] = True
    check()
    assert idx.wait_for_gpu(10) and fake.clones == base + 2
    check()
    idx.close()


def test_mirror_copy_failure_leaves_cpu_search(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    x = unit(rng.standard_normal((500, 16)))
    ids = np.arange(500, dtype=np.int64)
    fake = _FakeGpuFaiss(faiss, fail=True)
    monkeypatch.setattr("facematch.gallery.index.import_faiss", lambda: fake)
    _usable(monkeypatch, True)
    idx = FaissIndex(16, IndexConfig())
    idx.add(ids, x)
    assert not idx.wait_for_gpu(10) and not idx.on_gpu
    _, got = idx.search(x[:3], 1)
    assert got[:, 0].tolist() == [0, 1, 2]  # served by the CPU index
    assert idx._mirror is not None and "not implemented on GPU" in (idx._mirror.error or "")


def test_k_beyond_the_gpu_limit_is_answered_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    x = unit(rng.standard_normal((3000, 16)))
    ids = np.arange(3000, dtype=np.int64)
    idx, _ = _gpu_index(monkeypatch, IndexConfig(), 16)
    idx.add(ids, x)
    _, got = idx.search(x[:2], 2500)  # FAISS-GPU's k stops at 2048
    assert got.shape == (2, 2500) and (got >= 0).all() and got[:, 0].tolist() == [0, 1]
