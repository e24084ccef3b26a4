"""Export validation's own arithmetic: row cosines and the all-pairs operating point, against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from facematch.export.validate import ExportValidationError, pair_operating_point, row_cosines

from facematch.eval.metrics import tar_at_fmr


def test_row_cosines_are_plain_cosines_in_float64() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    b[0] = 3.0 * a[0]  # same direction, other length: cosine 1
    got = row_cosines(a, b)
    assert got.dtype == np.float64
    for i in range(6):
        x, y = a[i].astype(np.float64), b[i].astype(np.float64)
        assert got[i] == pytest.approx(float(x @ y) / math.sqrt(float(x @ x) * float(y @ y)), abs=1e-12)
    assert got[0] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ExportValidationError):
        row_cosines(a, b[:, :4])


def test_pair_operating_point_scores_every_unordered_pair_once() -> None:
    rng = np.random.default_rng(1)
    labels = tuple("aaabbbbccd")
    centres = {k: rng.standard_normal(8) for k in set(labels)}
    emb = np.stack([centres[k] + 0.6 * rng.standard_normal(8) for k in labels]) * rng.uniform(0.5, 20.0, (10, 1))
    gen, imp = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        x, y = emb[i], emb[j]
        cos = float(x @ y) / math.sqrt(float(x @ x) * float(y @ y))
        (gen if labels[i] == labels[j] else imp).append(cos)
    for fmr in (0.05, 0.2):
        got = pair_operating_point(emb, labels, fmr)
        want = tar_at_fmr(np.array(gen), np.array(imp), [fmr])[0]
        assert (got.n_genuine, got.n_impostor) == (len(gen), len(imp)) == (10, 35)
        assert got.resolvable and got.tar == want.tar and got.threshold == pytest.approx(want.threshold, abs=1e-12)
    assert not pair_operating_point(emb, labels, 1e-3).resolvable  # finer than 1 / 35 impostor pairs
    lone = pair_operating_point(emb[:3], labels[:3], 0.1)  # one identity: no impostor pair
    assert not lone.resolvable and lone.tar is None and (lone.n_genuine, lone.n_impostor) == (3, 0)
