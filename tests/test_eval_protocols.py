"""Evaluation protocols on synthetic embeddings: identification splits, open set, hypersphere, pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facematch.errors import InvalidArgumentError
from facematch.eval import metrics as M
from facematch.eval import protocols as P
from facematch.eval.report import to_jsonable


def _clusters(
    n_classes: int, per_class: int, spread: float, dim: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    x = np.repeat(centres, per_class, axis=0) + spread * rng.normal(size=(n_classes * per_class, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(n_classes), per_class)


def test_split_gallery_one_per_identity_seeded() -> None:
    lab = np.array([0, 0, 0, 1, 1, 2])
    g = P.split_gallery(lab, 1, seed=5)
    assert np.bincount(lab[g]).tolist() == [1, 1, 1]
    np.testing.assert_array_equal(g, P.split_gallery(lab, 1, seed=5))
    with pytest.raises(InvalidArgumentError):
        P.split_gallery(lab, 0)


def test_well_separated_classes_identify_perfectly() -> None:
    x, y = _clusters(12, 6, spread=0.05)
    ident = P.identification(x, y, fpirs=(0.1,))
    assert ident.closed_set.rank == {1: 1.0, 5: 1.0}
    assert ident.closed_set.n_probes == 12 * 5 and ident.closed_set.n_gallery_identities == 12
    o = ident.open_set
    assert o is not None and o.n_folds == 2 and sum(o.gallery_identities_per_fold) == 12
    # every identity is non-mated once (all its images), mated once (its non-gallery images)
    assert o.n_nonmated == 72 and o.n_mated == 60
    assert o.points[0].resolvable and o.points[0].dir == 1.0


def test_random_embeddings_identify_at_chance() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.repeat(np.arange(40), 10)
    ident = P.identification(x, y, fpirs=(0.1, 0.01))
    assert ident.closed_set.rank[1] < 0.1  # chance is 1/40
    o = ident.open_set
    assert o is not None
    # non-mated probes: 400; FPIR 1e-2 is resolvable (>= 100 probes); DIR near FPIR
    assert all(p.resolvable for p in o.points)
    assert o.points[0].dir is not None and o.points[0].dir < 0.1


def test_open_set_needs_enough_identities() -> None:
    x, y = _clusters(2, 3, spread=0.05)
    assert P.identification(x, y).open_set is None
    with pytest.raises(InvalidArgumentError):
        P.identification(x[:2], np.array([0, 1]))  # nobody left to probe


def test_verification_and_card_points() -> None:
    x, y = _clusters(6, 5, spread=0.05)
    s = M.all_pair_scores(x, y)
    v = P.verification(s, (1e-1, 1e-2, 1e-3), card_thresholds={"1e-3": 0.5, "1e-2": 0.4})
    assert v.auc == 1.0 and v.eer == 0.0
    assert v.n_genuine == 6 * 10 and v.n_impostor == 435 - 60
    assert [p.resolvable for p in v.operating_points] == [True, True, False]
    assert [c.card_fmr for c in v.card_points] == ["1e-2", "1e-3"]
    assert v.card_points[0].tar == 1.0
    # 375 impostor pairs resolve 1e-2 but not 1e-3: the report says so instead of "0.00e+00"
    assert [c.fmr_resolvable for c in v.card_points] == [True, False]
    assert v.card_points[1].observed_fmr_text() == "n/a (< 1/375 impostor pairs)"
    assert v.fmr_floor == pytest.approx(1 / 375)


def test_card_points_observable_exactly_where_a_threshold_exists() -> None:
    # 100 impostor pairs: FMR 1e-2 lets one impostor through (observable), 9e-3 none (not observable)
    scores = M.PairScores(genuine=np.linspace(0.5, 0.9, 20), impostor=np.linspace(-0.5, 0.45, 100))
    v = P.verification(scores, (1e-2,), card_thresholds={"1e-2": 0.445, "9e-3": 0.46})
    by_key = {c.card_fmr: c for c in v.card_points}
    assert by_key["1e-2"].fmr_resolvable and not by_key["9e-3"].fmr_resolvable
    assert by_key["1e-2"].observed_fmr == pytest.approx(0.01)  # 0.45 is the one impostor at or above 0.445
    assert by_key["1e-2"].observed_fmr_text() == "1.00e-02" and by_key["9e-3"].tar == 1.0
    assert [c.card_fmr for c in v.card_points] == ["1e-2", "9e-3"]  # coarsest first


def test_hypersphere_tight_vs_loose_classes() -> None:
    tight = _clusters(8, 5, spread=0.05)
    loose = _clusters(8, 5, spread=2.0)
    ht = P.hypersphere(M.all_pair_scores(*tight), *tight, norms=np.full(40, 20.0))
    hl = P.hypersphere(M.all_pair_scores(*loose), *loose, norms=None, norm_note="n/a")
    assert ht.alignment < hl.alignment
    assert ht.angles.criterion_met and not hl.angles.criterion_met
    assert ht.feature_norm is not None and ht.feature_norm.mean == 20.0 and ht.feature_norm.n == 40
    assert hl.feature_norm is None and hl.feature_norm_note == "n/a"
    assert -4.0 <= ht.uniformity <= 0.0


def test_pairs_protocol_counts_failures_apart() -> None:
    # separable scores: every pair with faces is classified right, so only the failures can cost accuracy
    same = np.r_[np.ones(150, bool), np.zeros(150, bool)]
    scores = np.r_[np.linspace(0.5, 0.9, 150), np.linspace(-0.3, 0.3, 150)]
    valid = np.ones(300, bool)
    valid[[0, 1, 200]] = False  # two genuine pairs and one impostor pair with a failed image
    r = P.pairs_protocol(scores, same, valid, None)
    assert r.n_pairs == 300 and r.n_failed_pairs == 3 and r.n_genuine == 148 and r.n_impostor == 149
    assert r.accuracy.mean_accuracy == 1.0 and len(r.accuracy.fold_accuracy) == 10
    assert sum(r.accuracy.fold_sizes) == 297
    assert r.accuracy_failures_as_nonmatch is not None
    # counted as non-matches, the two failed genuine pairs are errors and the failed impostor pair is right:
    # 10 folds of 30 pairs, so the mean accuracy drops by exactly 2/300
    assert sum(r.accuracy_failures_as_nonmatch.fold_sizes) == 300
    assert r.accuracy_failures_as_nonmatch.mean_accuracy == pytest.approx(1.0 - 2 / 300, abs=1e-12)
    assert r.auc == 1.0 and r.eer == 0.0
    assert [p.resolvable for p in r.operating_points] == [True, False, False]
    assert "seeded" in r.fold_source
    folds = np.repeat(np.arange(10), 30)
    assert P.pairs_protocol(scores, same, valid, folds).fold_source == "file"
    # nothing failed: no second accuracy
    assert P.pairs_protocol(scores, same, np.ones(300, bool), None).accuracy_failures_as_nonmatch is None


def test_pairs_protocol_needs_both_classes() -> None:
    with pytest.raises(InvalidArgumentError, match="genuine and impostor"):
        P.pairs_protocol(np.array([0.5, 0.6]), np.array([True, True]), np.array([True, True]), None)


def test_reports_are_json_without_nan() -> None:
    x, y = _clusters(4, 3, spread=0.05)
    v = P.verification(M.all_pair_scores(x, y), (1e-4,))
    data = to_jsonable(v)
    text = json.dumps(data, allow_nan=False)
    assert '"tar": null' in text and data["operating_points"][0]["resolvable"] is False
    # FMR is the one name: no key says FAR
    assert set(data["operating_points"][0]) >= {"target_fmr", "observed_fmr", "fmr_floor"}
    assert "fmr_floor" in data and "far" not in text.lower()
