"""Crash safety: a writer killed with SIGKILL mid-enrolment loses no acknowledged enrolment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facematch.errors import GalleryLockedError
from facematch.gallery import Gallery

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and flock are POSIX")

CHILD = r"""
import sys
import numpy as np
from facematch.gallery import Gallery

def vec(i):
    v = np.random.default_rng(i).standard_normal((2, 64)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

g = Gallery(sys.argv[1], synchronous=sys.argv[2])
print("ready", flush=True)
i = 0
while True:
    g.enroll_embeddings(f"id{i:05d}", vec(i), "crash-model", metadata={"i": i})
    print(f"ack id{i:05d}", flush=True)  # printed only after enroll returned (committed)
    i += 1
"""


def _vec(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal((2, 64)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_sigkill_mid_enrolment_loses_nothing_acknowledged(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "crash.fmg"
    # pre-populate and save an index, so the restart has a stale index file to reconcile
    with Gallery(path) as g:
        g.enroll_embeddings("seed", _vec(10**6), "crash-model")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), synchronous], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(GalleryLockedError):  # the child holds the writer lock
            Gallery(path)
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)  # mid-loop: the child is enrolling the next identity
        rest = proc.stdout.read()  # acks already in the pipe were acknowledged too
        acked += [ln.split()[1] for ln in rest.splitlines() if ln.startswith("ack ")]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 40, f"child acknowledged only {len(acked)} enrolments"

    with Gallery(path, read_only=False) as g:  # the dead child's lock is gone
        n_db, n_index = g.verify_consistency()
        assert n_db == n_index == 2 * len(g)
        for name in acked:
            assert g.get(name).num_templates == 2
        ids = [int(n[2:]) for n in acked]
        probes = np.stack([_vec(i)[1] for i in ids])
        results = g.identify_embeddings(probes, "crash-model", threshold=0.99)
        assert [r.identity_id for r in results] == acked
