"""The template -> identity map the search reads: dense by template id, or binary search when ids are sparse
(oracle: a dict of every template id ever written)."""

from __future__ import annotations

import numpy as np
import pytest

from facematch.gallery.owners import DENSE_MIN, TemplateOwners


def _check(owners: TemplateOwners, truth: dict[int, int], probe_ids: np.ndarray) -> None:
    got = owners.lookup(probe_ids)
    want = np.asarray([truth.get(int(t), -1) for t in probe_ids], np.int64)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    assert np.array_equal(owners.template_ids, np.asarray(sorted(truth), np.int64))
    assert len(owners) == len(truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lookups_equal_a_dict_through_appends_removals_and_sparse_ids(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = {int(t): int(t) // 3 for t in range(1, 5001)}
    owners = TemplateOwners(np.asarray(list(truth), np.int64)[::-1].copy(), np.asarray(list(truth.values()))[::-1])
    assert owners.dense
    next_id, modes = 5001, set()
    for step in range(300):
        op = rng.integers(0, 5)
        if op <= 1:  # append a few in order (an enrolment)
            new = np.arange(next_id, next_id + rng.integers(1, 6))
            next_id = int(new[-1]) + 1
            owners.append(new, step)
            truth.update({int(t): step for t in new})
        elif op == 2 and truth:  # remove some (a deletion)
            gone = rng.choice(np.asarray(list(truth)), min(len(truth), int(rng.integers(1, 400))), replace=False)
            owners.remove(np.r_[gone, -7, 10**12])  # unknown ids are ignored
            for t in gone:
                truth.pop(int(t))
        elif op == 3:  # far-away ids (another sequence, an import): the map turns sparse, then back
            far = np.asarray([next_id + 50 * DENSE_MIN + int(rng.integers(0, 1000))])
            owners.append(far, -step - 2)
            truth[int(far[0])] = -step - 2
            modes.add(owners.dense)
            owners.remove(far)
            truth.pop(int(far[0]))
        else:  # out of order (a follower applying a change log late)
            if truth:
                back = max(1, min(truth) - 1)
                if back not in truth:
                    owners.append(np.asarray([back]), 999)
                    truth[back] = 999
        probe = np.r_[rng.integers(-3, next_id + 10, 200), -1, 0, 10**15]
        _check(owners, truth, probe)
        modes.add(owners.dense)
    assert modes == {True, False}  # both ways of looking up were exercised


def test_empty_and_negative_ids() -> None:
    owners = TemplateOwners(np.zeros((0,), np.int64), np.zeros((0,), np.int64))
    assert owners.lookup(np.asarray([0, 1, -1])).tolist() == [-1, -1, -1] and len(owners) == 0
    owners.append(np.asarray([-5, 3]), 7)  # negative ids cannot index an array: binary search
    assert not owners.dense and owners.lookup(np.asarray([-5, 3, 4])).tolist() == [7, 7, -1]
    owners.remove(np.asarray([-5]))
    owners.append(np.asarray([4]), 8)
    assert owners.dense and owners.lookup(np.asarray([-5, 3, 4])).tolist() == [-1, 7, 8]
