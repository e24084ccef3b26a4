"""Evaluation metrics on tiny synthetic scores and embeddings with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facematch.calibration import thresholds_at_fmr
from facematch.errors import InvalidArgumentError
from facematch.eval import metrics as M

scores_st = st.lists(st.integers(-20, 20).map(lambda v: v / 20.0), min_size=1, max_size=40)


def test_perfect_separation_gives_auc_1_and_eer_0() -> None:
    curve = M.roc([0.9, 0.8, 0.7], [0.1, 0.2, 0.3, 0.4])
    assert M.auc(curve) == 1.0
    e = M.eer(curve)
    assert e.eer == 0.0
    assert 0.4 < e.threshold <= 0.7


def test_identical_classes_give_auc_half_and_eer_half() -> None:
    curve = M.roc([0.5] * 5, [0.5] * 7)
    assert M.auc(curve) == pytest.approx(0.5)
    assert M.eer(curve).eer == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    same = rng.normal(size=20000)
    curve = M.roc(same[:10000], same[10000:])
    assert M.auc(curve) == pytest.approx(0.5, abs=0.02)
    assert M.eer(curve).eer == pytest.approx(0.5, abs=0.02)


def test_reversed_classes_give_auc_0() -> None:
    curve = M.roc([0.1, 0.2], [0.8, 0.9])
    assert M.auc(curve) == 0.0
    assert M.eer(curve).eer == 1.0


def test_roc_points_and_ties() -> None:
    curve = M.roc([0.9, 0.5], [0.5, 0.1])
    # thresholds +inf, 0.9, 0.5 (ties: one genuine and one impostor accepted together), 0.1
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.5, 0.1])
    np.testing.assert_allclose(curve.tar, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(curve.fmr, [0.0, 0.0, 0.5, 1.0])
    assert M.auc(curve) == pytest.approx(0.875)  # P(g > i) + 0.5 P(g = i) = (3 + 0.5) / 4


@settings(max_examples=60, deadline=None)
@given(scores_st, scores_st)
def test_auc_is_the_mann_whitney_probability(gen: list[float], imp: list[float]) -> None:
    g, i = np.array(gen)[:, None], np.array(imp)[None, :]
    expected = float(np.mean((g > i) + 0.5 * (g == i)))
    assert M.auc(M.roc(gen, imp)) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(scores_st, st.sampled_from([0.5, 0.2, 0.1, 0.05, 0.01]))
def test_threshold_is_the_smallest_admitting_at_most_the_fmr(imp: list[float], fmr: float) -> None:
    """Oracle: brute force over the impostor scores themselves."""
    t = thresholds_at_fmr(imp, [fmr])[0]
    if fmr < 1.0 / len(imp):
        assert math.isnan(t)
        return
    arr = np.array(imp)
    assert np.mean(arr >= t) <= fmr + 1e-12
    below = arr[arr < t]
    if below.size:  # any lower threshold (the next score down) admits more than the target
        assert np.mean(arr >= below.max()) > fmr


def test_tar_at_fmr_hand_computed() -> None:
    imp = np.arange(1, 11) / 10.0  # 0.1 .. 1.0
    gen = np.array([0.95, 0.92, 0.85, 0.5])
    p10, p20, p1 = M.tar_at_fmr(gen, imp, [0.1, 0.2, 0.01])
    # FMR 0.1 of 10 impostors: one may pass (1.0), so the threshold sits just above 0.9
    assert p10.resolvable and 0.9 < p10.threshold < 0.9 + 1e-9
    assert p10.tar == 0.5 and p10.observed_fmr == 0.1 and p10.fnmr == 0.5
    # FMR 0.2: two pass (0.9, 1.0); threshold just above 0.8
    assert 0.8 < p20.threshold < 0.8 + 1e-9 and p20.tar == 0.75
    # FMR 0.01 is finer than 1/10: never reported
    assert not p1.resolvable and p1.tar is None and p1.threshold is None
    assert p1.fmr_floor == pytest.approx(0.1) and p1.n_impostor == 10 and p1.n_genuine == 4


def test_fmr_floor_respected_for_every_target() -> None:
    rng = np.random.default_rng(1)
    imp = rng.normal(size=999)
    points = M.tar_at_fmr(rng.normal(2, 1, 50), imp, [1e-2, 1e-3, 1e-4])
    assert [p.resolvable for p in points] == [True, False, False]
    assert points[0].observed_fmr is not None and points[0].observed_fmr <= 1e-2


def test_rates_at_threshold() -> None:
    assert M.rates_at_threshold([0.3, 0.6], [0.1, 0.6, 0.7], 0.6) == (0.5, 2 / 3)
    assert M.rates_at_threshold([], [0.1], 0.5) == (None, 0.0)


def test_bad_inputs_raise_facematch_errors() -> None:
    with pytest.raises(InvalidArgumentError):
        M.roc([], [0.1])
    with pytest.raises(InvalidArgumentError):
        M.roc([np.nan], [0.1])
    with pytest.raises(InvalidArgumentError):
        thresholds_at_fmr([0.1, 0.2], [1.5])
    with pytest.raises(InvalidArgumentError):
        M.cmc(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(InvalidArgumentError):
        M.all_pair_scores(np.zeros((3, 4)), np.array([0, 1]))


def _unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_all_pair_scores_match_brute_force_across_blocks() -> None:
    rng = np.random.default_rng(2)
    emb = _unit(rng.normal(size=(23, 8)).tolist())
    lab = rng.integers(0, 5, 23)
    grp = lab % 2
    ps = M.all_pair_scores(emb, lab, grp, block=4)
    gen, imp, ggen, gimp = [], [], [], []
    for i in range(23):
        for j in range(i + 1, 23):
            s = float(emb[i] @ emb[j])
            g = int(grp[i]) if grp[i] == grp[j] else -1
            (gen if lab[i] == lab[j] else imp).append(s)
            (ggen if lab[i] == lab[j] else gimp).append(g)
    np.testing.assert_allclose(ps.genuine, gen, atol=1e-6)
    np.testing.assert_allclose(ps.impostor, imp, atol=1e-6)
    assert ps.genuine_group is not None and ps.impostor_group is not None
    np.testing.assert_array_equal(ps.genuine_group, ggen)
    np.testing.assert_array_equal(ps.impostor_group, gimp)
    assert ps.genuine.size + ps.impostor.size == 23 * 22 // 2


def test_cmc_ranks_and_ties_count_against_the_probe() -> None:
    scores = np.array([[0.9, 0.1, 0.2], [0.5, 0.6, 0.7], [0.3, 0.3, 0.1]])
    true = np.array([0, 0, 1])
    ranks = M.cmc(scores, true, ks=(1, 2, 3))
    # probe 0 rank 1; probe 1 rank 3; probe 2 tied with another identity: rank 2
    assert ranks == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_max_by_identity() -> None:
    s = np.array([[0.1, 0.9, 0.3], [0.4, 0.2, 0.8]])
    out = M.max_by_identity(s, np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(out[:, :2], [[0.9, 0.3], [0.4, 0.8]])
    assert np.all(np.isneginf(out[:, 2]))


def test_dir_at_fpir_hand_computed() -> None:
    nonmated = np.arange(10) / 10.0  # 0.0 .. 0.9
    mated = np.array([0.95, 0.85, 0.99, 0.5])
    correct = np.array([True, True, False, True])
    p1, p01 = M.dir_at_fpir(mated, correct, nonmated, [0.1, 0.01])
    # FPIR 0.1: one non-mated (0.9) may pass, threshold just above 0.8
    assert p1.resolvable and 0.8 < p1.threshold < 0.8 + 1e-9
    # mated at/above: 0.95 (right), 0.85 (right), 0.99 (wrong identity) -> 2 of 4
    assert p1.dir == 0.5 and p1.observed_fpir == pytest.approx(0.1)
    assert not p01.resolvable and p01.dir is None and p01.fpir_floor == pytest.approx(0.1)


def test_fairness_per_group_rates_and_ratio() -> None:
    scores = M.PairScores(
        genuine=np.array([0.9, 0.4, 0.8, 0.7]),
        impostor=np.array([0.6, 0.1, 0.2, 0.3, 0.55]),
        genuine_group=np.array([0, 0, 1, 1]),
        impostor_group=np.array([0, 0, 1, 1, -1]),
    )
    f = M.fairness(scores, ["A", "B"], shared_threshold=0.5, target_fmr=0.5)
    a, b = f.groups
    assert (a.n_genuine, a.n_impostor, a.fnmr, a.fmr) == (2, 2, 0.5, 0.5)
    assert (b.n_genuine, b.n_impostor, b.fnmr, b.fmr) == (2, 2, 0.0, 0.0)
    assert f.fnmr_ratio is None and f.fnmr_gap == 0.5  # min is 0: ratio undefined, gap still reported
    assert f.cross_group_impostors == 1 and f.cross_group_fmr == 1.0
    # own thresholds at FMR 0.5 of 2 impostors: one may pass
    assert a.own_threshold is not None and 0.1 < a.own_threshold < 0.1 + 1e-9 and a.own_fnmr == 0.0
    assert b.own_threshold is not None and 0.2 < b.own_threshold < 0.2 + 1e-9
    g = M.fairness(scores, ["A", "B"], shared_threshold=0.75, target_fmr=0.5)
    assert g.fnmr_ratio == pytest.approx(1.0)  # both groups reject one genuine pair of two


def test_fairness_ratio_when_both_groups_err() -> None:
    scores = M.PairScores(
        genuine=np.array([0.1, 0.9, 0.9, 0.9, 0.2, 0.3]),
        impostor=np.array([0.8, 0.1]),
        genuine_group=np.array([0, 0, 0, 0, 1, 1]),
        impostor_group=np.array([0, 1]),
    )
    f = M.fairness(scores, ["A", "B"], 0.5, 0.5)
    assert f.groups[0].fnmr == 0.25 and f.groups[1].fnmr == 1.0
    assert f.fnmr_ratio == pytest.approx(4.0)


def test_wilson_interval_known_answers() -> None:
    # the textbook example: 8 successes of 10 at z = 1.96
    lo, hi = M.wilson_interval(8, 10, z=1.96)
    assert lo == pytest.approx(0.4902, abs=5e-5) and hi == pytest.approx(0.9433, abs=5e-5)
    # 0 of n and n of n: one bound sits on the boundary, the other is n / (n + z^2) from it
    z = 1.96
    for n in (1, 6, 10, 11, 1000):  # 6 and 11 once gave bounds a few ulps beyond the estimate
        lo0, hi0 = M.wilson_interval(0, n, z)
        assert lo0 == 0.0 and hi0 == pytest.approx(z * z / (n + z * z), rel=1e-12)
        lon, hin = M.wilson_interval(n, n, z)
        assert hin == 1.0 and lon == pytest.approx(n / (n + z * z), rel=1e-12)
    # no trials: nothing is known; more successes than trials is an error
    assert M.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(InvalidArgumentError):
        M.wilson_interval(11, 10)
    # z = 0: the interval collapses onto the estimate
    assert M.wilson_interval(3, 12, z=0.0) == pytest.approx((0.25, 0.25))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5000), st.data(), st.sampled_from([1.0, 1.645, 1.96, 2.576]))
def test_wilson_interval_is_the_closed_form(n: int, data: st.DataObject, z: float) -> None:
    """Oracle: the Wilson bounds are the roots in p of (k/n - p)^2 = z^2 p (1 - p) / n."""
    k = data.draw(st.integers(0, n))
    ph = k / n
    roots = np.sort(np.roots([n + z * z, -(2 * n * ph + z * z), n * ph * ph]).real)
    lo, hi = M.wilson_interval(k, n, z)
    assert lo == pytest.approx(max(0.0, roots[0]), abs=1e-9)
    assert hi == pytest.approx(min(1.0, roots[1]), abs=1e-9)
    assert lo <= ph <= hi


def test_wilson_interval_narrows_with_more_trials_and_widens_with_z() -> None:
    widths = [hi - lo for lo, hi in (M.wilson_interval(n // 5, n) for n in (10, 100, 1000, 10000))]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.02
    w95 = np.subtract(*M.wilson_interval(20, 100, 1.96)[::-1])
    w99 = np.subtract(*M.wilson_interval(20, 100, 2.576)[::-1])
    assert w99 > w95


def test_alignment_and_uniformity_known_values() -> None:
    assert M.alignment([1.0, 1.0]) == 0.0  # collapsed classes
    assert M.alignment([0.0]) == pytest.approx(2.0)  # orthogonal: ||a-b||^2 = 2
    assert M.uniformity([-1.0]) == pytest.approx(-8.0)  # antipodal: exp(-2 * 4)
    assert M.uniformity([1.0, 1.0]) == pytest.approx(0.0)
    # log-mean-exp is stable for many pairs
    assert M.uniformity(np.full(10**6, -1.0)) == pytest.approx(-8.0)


def test_angle_stats_and_the_open_set_criterion() -> None:
    # two tight classes 90 degrees apart: criterion met
    emb = _unit([[1, 0.05], [1, -0.05], [0.05, 1], [-0.05, 1]])
    lab = np.array([0, 0, 1, 1])
    a = M.angle_stats(M.all_pair_scores(emb, lab), emb, lab)
    assert a.criterion_met and a.classes_meeting_criterion == 2 and a.n_classes == 2
    assert a.max_intra_deg == pytest.approx(2 * math.degrees(math.atan(0.05)), abs=1e-3)
    assert a.min_inter_deg < 90 and a.min_inter_deg > a.max_intra_deg
    # swap one label: an intra angle now exceeds an inter angle
    lab2 = np.array([0, 1, 0, 1])
    b = M.angle_stats(M.all_pair_scores(emb, lab2), emb, lab2)
    assert not b.criterion_met and b.classes_meeting_criterion == 0


def test_best_threshold_and_kfold() -> None:
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    t = M.best_threshold(s, y)
    assert 0.3 < t < 0.7 and t == pytest.approx(0.5)
    k = M.kfold_accuracy(np.tile(s, 5), np.tile(y, 5), M.assign_folds(30, 10))
    assert k.mean_accuracy == 1.0 and len(k.fold_accuracy) == 10 and sum(k.fold_sizes) == 30
    # an all-negative set: best is to accept nothing
    assert M.best_threshold(np.array([0.2, 0.4]), np.array([False, False])) > 0.4


def test_kfold_accuracy_hand_case() -> None:
    # fold 1 holds a high-scoring impostor (0.8) that the threshold learnt on fold 0 accepts
    s = np.array([0.9, 0.1, 0.8, 0.2])
    y = np.array([True, False, False, False])
    k = M.kfold_accuracy(s, y, np.array([0, 0, 1, 1]))
    # fold 0 is tested with fold 1's threshold: fold 1 has only impostors, so accept nothing above 0.8
    assert k.fold_threshold[0] == np.nextafter(0.8, np.inf) and k.fold_accuracy[0] == 1.0
    # fold 1 is tested with fold 0's threshold, midway between 0.1 and 0.9: the 0.8 impostor passes
    assert k.fold_threshold[1] == pytest.approx(0.5) and k.fold_accuracy[1] == 0.5
    assert k.mean_accuracy == 0.75 and k.std_accuracy == 0.25 and k.fold_sizes == [2, 2]


def test_assign_folds_balanced_and_seeded() -> None:
    f = M.assign_folds(23, 10, seed=3)
    counts = np.bincount(f)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23
    np.testing.assert_array_equal(f, M.assign_folds(23, 10, seed=3))
    assert not np.array_equal(f, M.assign_folds(23, 10, seed=4))  # the seed matters
    assert np.bincount(M.assign_folds(3, 10)).tolist() == [1, 1, 1]  # never more folds than items
