"""The error-versus-reject characteristic and the unified score's logistic fit, against brute-force oracles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from facematch.errors import InvalidArgumentError
from facematch.eval import erc as E


def _pairs(labels: np.ndarray, seed: int = 0) -> E.GenuinePairs:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(labels.size, 8)).astype(np.float32)
    emb[:, 0] += 3.0 * labels  # some structure; the scores are whatever they are
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return E.GenuinePairs.of(emb, labels)


def test_genuine_pairs_are_every_same_identity_pair() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2])
    p = _pairs(labels)
    assert sorted(zip(p.i.tolist(), p.j.tolist(), strict=True)) == [(0, 1), (2, 3), (2, 4), (3, 4)]
    assert p.n_images == 6 and len(p) == 4 and np.all(np.abs(p.score) <= 1)


def test_erc_matches_a_brute_force_oracle() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 5)
    pairs = _pairs(labels, 1)
    quality = rng.normal(size=labels.size)
    thr = float(np.median(pairs.score))
    reject = (0.0, 0.1, 0.2, 0.3)
    got = E.erc(quality, pairs, thr, reject)
    for share, value in zip(reject, got, strict=True):
        n_drop = int(round(share * labels.size))
        dropped = set(np.argsort(quality, kind="stable")[:n_drop].tolist())
        kept = [
            (s < thr)
            for i, j, s in zip(pairs.i, pairs.j, pairs.score, strict=True)
            if i not in dropped and j not in dropped
        ]
        assert value == pytest.approx(sum(kept) / len(kept))
    # rejecting by the truth (images in failing pairs first) drives FNMR down; rejecting them last, up
    involvement = np.zeros(labels.size)
    for i, j, s in zip(pairs.i, pairs.j, pairs.score, strict=True):
        involvement[[i, j]] += s < thr
    oracle = E.erc(-involvement, pairs, thr, reject)
    adversary = E.erc(involvement, pairs, thr, reject)
    assert oracle[-1] < got[0] < adversary[-1]


def test_erc_within_groups_rejects_the_share_of_each_group() -> None:
    g = np.array([10.0, 1.0, 2.0, 3.0, 20.0, 30.0, 40.0, 4.0])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    keep = E.kept_after_rejecting(g, 0.25, groups)
    assert keep.tolist() == [True, False, True, True, True, True, True, False]
    assert E.kept_after_rejecting(g, 0.25).tolist() == [True, False, False, True, True, True, True, True]
    with pytest.raises(InvalidArgumentError):
        E.kept_after_rejecting(g, 1.0)
    with pytest.raises(InvalidArgumentError):
        E.kept_after_rejecting(np.array([1.0, np.nan]), 0.1)


def test_random_rejection_is_flat_and_area_and_cut_are_what_they_say() -> None:
    labels = np.repeat(np.arange(10), 8)
    pairs = _pairs(labels, 2)
    thr = float(np.quantile(pairs.score, 0.2))
    rnd = E.erc_random(pairs, thr, (0.0, 0.1, 0.2, 0.3), draws=200)
    assert np.all(np.abs(rnd - rnd[0]) < 0.03)
    curve = np.array([0.1, 0.08, 0.05])
    assert E.area((0.0, 0.1, 0.2), curve) == pytest.approx(0.1 * (0.09 + 0.065))
    assert E.fnmr_cut(curve, (0.0, 0.1, 0.2), 0.2) == pytest.approx(0.5)
    with pytest.raises(InvalidArgumentError):
        E.fnmr_cut(curve, (0.0, 0.1, 0.2), 0.15)
    assert math.isnan(E.area((0.0, 0.1), np.array([np.nan, 0.1])))


def test_image_success_counts_each_comparison_for_both_images() -> None:
    pairs = E.GenuinePairs.from_pairs(np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([0.9, 0.1, 0.5]), 4)
    share, count = E.image_success(pairs, 0.3)
    np.testing.assert_allclose(share, [0.5, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(count, [2, 2, 2, 0])


def test_identity_folds_keep_every_identity_in_one_fold() -> None:
    labels = np.repeat(np.arange(12), 3)
    folds = E.identity_folds(labels, 5, seed=3)
    for c in range(12):
        assert np.unique(folds[labels == c]).size == 1
    assert set(folds.tolist()) == set(range(5))
    np.testing.assert_array_equal(folds, E.identity_folds(labels, 5, seed=3))
    with pytest.raises(InvalidArgumentError):
        E.identity_folds(np.array([0, 0, 1]), 5)


def test_logistic_fit_recovers_known_parameters() -> None:
    """Oracle: shares drawn from a known logistic model are fitted back (and match a grid search's optimum)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4000, 2))
    true_w, true_b = np.array([1.5, -0.7]), 0.4
    p = 1.0 / (1.0 + np.exp(-(x @ true_w + true_b)))
    n = rng.integers(5, 40, size=p.size)
    target = rng.binomial(n, p) / n
    w, b = E.fit_logistic(x, target, n.astype(float), l2=0.0)
    np.testing.assert_allclose(w, true_w, atol=0.06)
    assert b == pytest.approx(true_b, abs=0.05)

    def nll(wv: np.ndarray, bv: float) -> float:
        z = x @ wv + bv
        return float(np.sum(n * (np.logaddexp(0.0, z) - target * z)))

    best = nll(w, b)
    for dw0, dw1, db in itertools.product((-0.02, 0.0, 0.02), repeat=3):
        assert nll(w + np.array([dw0, dw1]), b + db) >= best - 1e-6
    # the penalty shrinks the weights, not the bias
    ws, _ = E.fit_logistic(x, target, n.astype(float), l2=1e4)
    assert np.all(np.abs(ws) < np.abs(w))


def test_logistic_fit_refuses_bad_inputs() -> None:
    x = np.zeros((3, 1))
    for t, w in (([0.5, 2.0, 0.1], None), ([0.1, 0.2, np.nan], None), ([0.1, 0.2, 0.3], [-1.0, 1.0, 1.0])):
        with pytest.raises(InvalidArgumentError):
            E.fit_logistic(x, np.array(t), None if w is None else np.array(w))
    with pytest.raises(InvalidArgumentError):
        E.fit_logistic(np.zeros((3, 1)), np.zeros(2))


def test_out_of_fold_scores_never_see_their_fold() -> None:
    """Changing one fold's targets leaves that fold's own out-of-fold scores unchanged."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 2))
    target = (x[:, 0] > 0).astype(float) * 0.8 + 0.1
    folds = np.repeat(np.arange(3), 20)
    base = E.out_of_fold_logits(x, target, np.ones(60), folds)
    changed = target.copy()
    changed[folds == 0] = 1.0 - changed[folds == 0]
    other = E.out_of_fold_logits(x, changed, np.ones(60), folds)
    np.testing.assert_allclose(base[folds == 0], other[folds == 0])
    assert not np.allclose(base[folds == 1], other[folds == 1])
