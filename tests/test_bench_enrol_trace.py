"""The helpers of ``benchmarks/bench_enrol_ab.py trace`` (issue 18): the overlap of calls with
background events against a brute-force check, and the disk probe leaving nothing behind."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_enrol_ab.py"


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_enrol_ab", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overlaps_equals_bruteforce() -> None:
    bench = _bench()
    rng = np.random.default_rng(3)
    gaps = rng.uniform(0.0, 2.0, 400)  # back-to-back calls with gaps between them
    durations = rng.uniform(0.1, 3.0, 400)
    starts = np.cumsum(gaps + np.r_[0.0, durations[:-1]])
    ends = starts + durations
    a = rng.uniform(0.0, ends[-1], 60)
    spans = np.stack([a, a + rng.uniform(0.0, 5.0, 60)], axis=1)
    expected = np.array([any(s0 <= b and a0 <= e for a0, b in spans) for s0, e in zip(starts, ends, strict=True)])
    got = bench._overlaps(starts, ends, spans)
    assert got.dtype == bool and np.array_equal(got, expected)
    assert 0 < got.sum() < got.size  # the random case tests both sides
    assert not bench._overlaps(starts, ends, np.zeros((0, 2))).any()


def test_disk_probe_times_each_fdatasync_and_removes_its_file(tmp_path: Path) -> None:
    lat = _bench()._disk_fsync(tmp_path, 20, 4096)
    assert lat.shape == (20,) and np.all(lat > 0)
    assert list(tmp_path.iterdir()) == []
