"""Can this FAISS build search on this GPU? Checked before the index's GPU mirror is enabled.

FAISS-GPU errors call ``abort()``: a wheel compiled without kernels for the GPU's
architecture ("CUDA error 209: no kernel image", e.g. ``faiss-gpu-cu12`` 1.14 on an
H100/H200: sm_70/sm_80 code only, no PTX) kills the whole process on its first search, and
no ``try/except`` can catch it. So the check runs in a subprocess:

1. the architectures the installed FAISS carries are read from the ``.nv_fatbin`` section
   of its shared libraries (cubins ``sm_XY`` and PTX ``compute_XY``), in this process, from
   the files (:func:`compiled_architectures`);
2. a child Python imports FAISS, reports the GPU count and the compute capability of
   device 0, then runs a small flat inner-product search on the GPU and compares it with
   the CPU; an ``abort()`` there kills the child only;
3. the GPU is usable when the child passed and the device's capability is covered: a cubin
   of the same major and a minor no higher, or PTX of a capability no higher (JIT).

The result is cached per process. ``FACEMATCH_FAISS_GPU_PROBE=0`` skips the probe (the
GPU is then never used by ``device="auto"``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PROBE_ENV = "FACEMATCH_FAISS_GPU_PROBE"
PROBE_TIMEOUT_S = 120.0
FATBIN_MAGIC = 0xBA55ED50
_KIND_PTX, _KIND_CUBIN = 1, 2

# The child: prints one JSON line with the device facts *before* touching GPU kernels, then one with the result.
PROBE_SCRIPT = r"""
import ctypes, json, sys
import numpy as np
import faiss
facts = {"faiss": getattr(faiss, "__version__", "?"), "gpus": 0, "cc": None}
try:
    facts["gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0
except Exception as exc:
    facts["error"] = repr(exc)
if facts["gpus"]:
    for name in ("libcudart.so.12", "libcudart.so.13", "libcudart.so"):
        try:
            rt = ctypes.CDLL(name)
        except OSError:
            continue
        major, minor = ctypes.c_int(), ctypes.c_int()
        if rt.cudaDeviceGetAttribute(ctypes.byref(major), 75, 0) == 0 and \
           rt.cudaDeviceGetAttribute(ctypes.byref(minor), 76, 0) == 0:
            facts["cc"] = [major.value, minor.value]
            break
print(json.dumps(facts), flush=True)
if not facts["gpus"]:
    sys.exit(0)
rng = np.random.default_rng(0)
x = rng.standard_normal((4096, 64)).astype("float32")
q = x[:8].copy()
cpu = faiss.IndexFlatIP(64)
cpu.add(x)
res = faiss.StandardGpuResources()
gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
ds, ids = gpu.search(q, 10)
dc, idc = cpu.search(q, 10)
print(json.dumps({"search": bool((ids == idc).mean() > 0.99 and abs(ds - dc).max() < 1e-3)}), flush=True)
"""


@dataclass(frozen=True)
class Architectures:
    """GPU code a library carries: cubin ``(major, minor)`` capabilities and PTX ones."""

    cubins: frozenset[tuple[int, int]] = frozenset()
    ptx: frozenset[tuple[int, int]] = frozenset()

    @property
    def known(self) -> bool:
        return bool(self.cubins or self.ptx)

    def runs_on(self, cc: tuple[int, int]) -> bool:
        """True when a device of capability ``cc`` can run this code (cubin of its major, or PTX JIT)."""
        if any(m == cc[0] and n <= cc[1] for m, n in self.cubins):
            return True
        return any((m, n) <= cc for m, n in self.ptx)

    def describe(self) -> str:
        parts = [f"sm_{m}{n}" for m, n in sorted(self.cubins)] + [f"compute_{m}{n}" for m, n in sorted(self.ptx)]
        return ", ".join(parts) or "unknown"


@dataclass(frozen=True)
class GpuProbe:
    """The outcome of a probe: ``usable`` and why (shown in logs and errors)."""

    usable: bool
    reason: str
    gpus: int = 0
    compute_capability: tuple[int, int] | None = None
    architectures: Architectures = field(default_factory=Architectures)


# ---- compiled architectures (from the files) ------------------------------------------------
def _elf_section(path: Path, wanted: str) -> tuple[int, int] | None:
    """(offset, size) of the named section of a 64-bit little-endian ELF file, or None."""
    with path.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        (shoff,) = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
        if not shoff or shentsize < 64 or shstrndx >= shnum:
            return None
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        if len(table) < shentsize * shnum:
            return None
        sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        _, _, _, _, str_off, str_size = sections[shstrndx]
        f.seek(str_off)
        names = f.read(str_size)
        for name_off, _, _, _, off, size in sections:
            end = names.find(b"\0", name_off)
            if names[name_off:end].decode("ascii", "replace") == wanted:
                return off, size
    return None


def _fatbin_entries(path: Path, offset: int, size: int) -> Iterator[tuple[int, int]]:
    """(kind, sm) of every entry of the fat binaries in a ``.nv_fatbin`` section (reads headers only)."""
    with path.open("rb") as f:
        pos, end = offset, offset + size
        while pos + 16 <= end:
            f.seek(pos)
            magic, _version, header_size, fat_size = struct.unpack("<IHHQ", f.read(16))
            if magic != FATBIN_MAGIC:
                pos += 8  # containers are 8-byte aligned; skip padding
                continue
            entry, stop = pos + header_size, pos + header_size + fat_size
            while entry + 32 <= stop:
                f.seek(entry)
                kind, _unk, entry_header, padded = struct.unpack("<HHIQ", f.read(16))
                _payload, _unk2, _minor, _major, sm = struct.unpack("<IIHHI", f.read(16))
                if entry_header == 0:
                    break
                yield kind, sm
                entry += entry_header + padded
            pos = stop


def library_architectures(path: Path) -> Architectures:
    """The cubin and PTX capabilities in one shared library (empty when it has no GPU code)."""
    try:
        section = _elf_section(path, ".nv_fatbin")
        if section is None:
            return Architectures()
        cubins, ptx = set(), set()
        for kind, sm in _fatbin_entries(path, *section):
            cc = (sm // 10, sm % 10)
            if kind == _KIND_PTX:
                ptx.add(cc)
            elif kind == _KIND_CUBIN:
                cubins.add(cc)
        return Architectures(frozenset(cubins), frozenset(ptx))
    except (OSError, struct.error) as exc:
        logger.debug("cannot read GPU code of %s: %s", path, exc)
        return Architectures()


def faiss_libraries() -> list[Path]:
    """The shared libraries of the installed ``faiss`` package (and its bundled ``*.libs``), without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("faiss")
    if spec is None or not spec.submodule_search_locations:
        return []
    pkg = Path(next(iter(spec.submodule_search_locations)))
    dirs = [pkg, *sorted(pkg.parent.glob("faiss*.libs"))]
    return sorted(p for d in dirs for p in d.glob("*.so*") if p.is_file())


def compiled_architectures(libraries: Sequence[Path] | None = None) -> Architectures:
    """Union of the GPU code in ``libraries`` (default: the installed FAISS)."""
    cubins: set[tuple[int, int]] = set()
    ptx: set[tuple[int, int]] = set()
    for lib in faiss_libraries() if libraries is None else libraries:
        archs = library_architectures(Path(lib))
        cubins |= archs.cubins
        ptx |= archs.ptx
    return Architectures(frozenset(cubins), frozenset(ptx))


# ---- the subprocess ------------------------------------------------------------------------
def _last_json(text: str, key: str) -> dict[str, object] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and key in data:
                return data
    return None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_probe(
    command: Sequence[str] | None = None,
    *,
    architectures: Architectures | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> GpuProbe:
    """Probe in a child process (``command`` defaults to this Python running :data:`PROBE_SCRIPT`)."""
    archs = compiled_architectures() if architectures is None else architectures
    cmd = list(command) if command is not None else [sys.executable, "-c", PROBE_SCRIPT]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return GpuProbe(False, f"the FAISS-GPU probe did not finish in {timeout_s:.0f} s", architectures=archs)
    except OSError as exc:
        return GpuProbe(False, f"the FAISS-GPU probe could not start: {exc}", architectures=archs)
    facts = _last_json(proc.stdout, "gpus") or {}
    gpus = int(facts.get("gpus") or 0)  # type: ignore[call-overload]
    raw_cc = facts.get("cc")
    cc = (int(raw_cc[0]), int(raw_cc[1])) if isinstance(raw_cc, list) and len(raw_cc) == 2 else None
    base = {"gpus": gpus, "compute_capability": cc, "architectures": archs}
    if proc.returncode < 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        return GpuProbe(
            False,
            f"FAISS-GPU killed the probe process ({_signal_name(proc.returncode)}) on its first GPU search"
            + (f": {tail}" if tail else "")
            + (f"; the installed FAISS carries {archs.describe()}" if archs.known else ""),
            **base,  # type: ignore[arg-type]
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        return GpuProbe(False, f"the FAISS-GPU probe failed (exit {proc.returncode}): {tail}", **base)  # type: ignore[arg-type]
    if gpus == 0:
        return GpuProbe(False, "FAISS sees no GPU (a CPU build, or no visible device)", **base)  # type: ignore[arg-type]
    if cc is not None and archs.known and not archs.runs_on(cc):
        return GpuProbe(
            False,
            f"the GPU has compute capability {cc[0]}.{cc[1]} but the installed FAISS carries only "
            f"{archs.describe()} (no kernel image for it; install faiss-gpu>=1.15, see docs/gpu.md)",
            **base,  # type: ignore[arg-type]
        )
    result = _last_json(proc.stdout, "search")
    if not result or result.get("search") is not True:
        return GpuProbe(False, "the FAISS-GPU probe search disagreed with the CPU", **base)  # type: ignore[arg-type]
    where = f"compute capability {cc[0]}.{cc[1]}" if cc else "unknown compute capability"
    return GpuProbe(True, f"FAISS-GPU works on {gpus} GPU(s), {where}", **base)  # type: ignore[arg-type]


_cache: GpuProbe | None = None
_cache_lock = threading.Lock()


def faiss_gpu_probe() -> GpuProbe:
    """The process-wide probe result (run once, on first need)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            if os.environ.get(PROBE_ENV, "").strip().lower() in ("0", "false", "no", "off"):
                _cache = GpuProbe(False, f"{PROBE_ENV}=0: the FAISS-GPU probe is disabled")
            else:
                _cache = run_probe()
            log = logger.info if _cache.usable else logger.warning
            log("FAISS-GPU probe: %s", _cache.reason)
        return _cache


def reset_probe_cache() -> None:
    """Forget the cached probe (tests; a process that installed a driver)."""
    global _cache
    with _cache_lock:
        _cache = None


__all__ = [
    "PROBE_SCRIPT",
    "Architectures",
    "GpuProbe",
    "compiled_architectures",
    "faiss_gpu_probe",
    "faiss_libraries",
    "library_architectures",
    "reset_probe_cache",
    "run_probe",
]
