"""Gallery API on synthetic embeddings: enrolment, identification, open-set, pagination, errors, locking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _gallery_util import DIM, MODEL, calibration, identities, noisy, unit

from facematch.errors import (
    CalibrationMissingError,
    DuplicateIdentityError,
    GalleryError,
    GalleryLockedError,
    IdentityNotFoundError,
    InvalidArgumentError,
    ModelMismatchError,
    TemplateNotFoundError,
)
from facematch.gallery import Gallery, IndexConfig
from facematch.gallery.openset import threshold_for_fpir
from facematch.types import IdentifyResult


@pytest.fixture(scope="module")
def cal():  # type: ignore[no-untyped-def]
    return calibration(np.random.default_rng(0))


@pytest.fixture()
def populated(tmp_path, cal):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    templates, centres = identities(60, 3, rng)
    g = Gallery(tmp_path / "g.fmg", calibration=cal)
    for i in range(60):
        g.enroll_embeddings(f"p{i:03d}", templates[i], MODEL, metadata={"n": i})
    yield g, centres, rng
    g.close()


def test_identify_ranks_the_right_identity(populated) -> None:  # type: ignore[no-untyped-def]
    g, centres, rng = populated
    probes = noisy(centres, 0.8, rng)
    results = g.identify_embeddings(probes, MODEL, k=3)
    assert len(results) == 60 and all(isinstance(r, IdentifyResult) for r in results)
    assert [r.identity_id for r in results] == [f"p{i:03d}" for i in range(60)]
    r = results[5]
    assert len(r.candidates) == 3 and r.candidates[0].similarity >= r.candidates[1].similarity
    assert len({c.identity_id for c in r.candidates}) == 3  # one entry per identity, not per template
    assert r.candidates[0].metadata == {"n": 5} and r.candidates[0].template_id in g.get("p005").template_ids
    assert r.gallery_size == 60 and r.target_fpir == g.default_fpir
    assert r.threshold == pytest.approx(threshold_for_fpir(g.calibration, g.default_fpir, 180))
    # estimated FMR decreases as similarity increases
    fmrs = [c.estimated_fmr for c in r.candidates]
    assert fmrs[0] <= fmrs[1] <= fmrs[2]


def test_unknown_probes_and_thresholds(populated) -> None:  # type: ignore[no-untyped-def]
    g, _, rng = populated
    strangers = unit(rng.standard_normal((200, DIM)))
    res = g.identify_embeddings(strangers, MODEL, fpir=0.05)
    fp = sum(not r.is_unknown for r in res)
    assert fp <= 25  # expected <= 10 at FPIR 0.05; a generous binomial bound
    assert all(r.best is None for r in res if r.is_unknown)
    # an explicit threshold is used as given; -1 accepts everything, 1 nothing
    assert all(not r.is_unknown for r in g.identify_embeddings(strangers[:5], MODEL, threshold=-1.0))
    assert all(r.is_unknown for r in g.identify_embeddings(strangers[:5], MODEL, threshold=1.0))
    with pytest.raises(InvalidArgumentError):
        g.identify_embeddings(strangers[:1], MODEL, threshold=0.5, fpir=0.01)
    with pytest.raises(InvalidArgumentError):
        g.identify_embeddings(strangers[:1], MODEL, threshold=2.0)
    # a larger gallery needs a higher threshold for the same FPIR
    assert g.resolve_threshold(fpir=0.01)[0] > threshold_for_fpir(g.calibration, 0.01, 10)
    assert not any(r.threshold_extrapolated for r in res)
    # an FPIR finer than the calibration resolves over 180 templates: extrapolated from the tail, flagged
    fine = g.identify_embeddings(strangers, MODEL, fpir=1e-4)
    assert all(r.threshold_extrapolated for r in fine) and fine[0].to_dict()["threshold_extrapolated"] is True
    assert fine[0].threshold > max(g.calibration.curve_similarity)
    assert all(r.is_unknown for r in fine)


def test_aggregations_and_rerank(tmp_path, cal) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    templates, centres = identities(40, 4, rng, cos=0.7)
    probes = noisy(centres, 0.8, rng)
    expected = [f"q{i}" for i in range(40)]
    for cfg in (IndexConfig(), IndexConfig(kind="hnsw", storage="sq8", rerank=True, min_train=100)):
        path = tmp_path / cfg.kind
        with Gallery(path, index=cfg, calibration=cal) as g:
            for i in range(40):
                g.enroll_embeddings(f"q{i}", templates[i], MODEL)
            for agg in ("max", "mean", "topk_mean"):
                res = g.identify_embeddings(probes, MODEL, k=2, aggregation=agg, threshold=0.0)
                assert [r.identity_id for r in res] == expected, (cfg.describe(), agg)
            mean = g.identify_embeddings(probes[:1], MODEL, aggregation="mean", threshold=0.0)[0].candidates[0]
            exact = float(np.mean(unit(templates[0]) @ probes[0]))
            assert mean.similarity == pytest.approx(exact, abs=1e-5)
            if cfg.rerank:  # re-ranked scores are exact fp32 cosines despite SQ8 storage
                best = g.identify_embeddings(probes[:1], MODEL, threshold=0.0)[0].candidates[0]
                assert best.similarity == pytest.approx(float(np.max(unit(templates[0]) @ probes[0])), abs=1e-5)


def test_templates_list_delete_metadata(populated) -> None:  # type: ignore[no-untyped-def]
    g, centres, rng = populated
    info = g.get("p007")
    assert info.num_templates == 3 and info.metadata == {"n": 7}
    rep = g.add_embeddings("p007", noisy(centres[7:8], 0.8, rng), MODEL, sources=["extra.jpg"])
    assert not rep.created and len(rep.template_ids) == 1 and rep.outcomes[0].source == "extra.jpg"
    assert g.get("p007").num_templates == 4
    assert g.remove_template(rep.template_ids[0]) == "p007"
    with pytest.raises(TemplateNotFoundError):
        g.remove_template(rep.template_ids[0])
    assert g.set_metadata("p007", {"team": "red"}).metadata == {"team": "red"}
    # pagination walks every identity once, in order
    seen, cursor = [], None
    while True:
        page = g.list_identities(limit=7, cursor=cursor)
        seen += [i.identity_id for i in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(f"p{i:03d}" for i in range(60))
    deleted = g.delete("p010")
    assert deleted.identity_id == "p010" and "p010" not in g and len(g) == 59
    hit = g.identify_embeddings(noisy(centres[10:11], 0.9, rng), MODEL, threshold=-1.0)[0]
    assert all(c.identity_id != "p010" for c in hit.candidates)
    g.verify_consistency()


def test_bad_inputs(tmp_path, populated) -> None:  # type: ignore[no-untyped-def]
    g, centres, _ = populated
    with pytest.raises(DuplicateIdentityError):
        g.enroll_embeddings("p001", centres[:1], MODEL)
    with pytest.raises(IdentityNotFoundError):
        g.get("nobody")
    with pytest.raises(IdentityNotFoundError):
        g.delete("nobody")
    with pytest.raises(IdentityNotFoundError):
        g.add_embeddings("nobody", centres[:1], MODEL)
    with pytest.raises(ModelMismatchError):
        g.enroll_embeddings("new", np.ones((1, DIM + 1), np.float32), MODEL)  # wrong dimension
    with pytest.raises(ModelMismatchError):
        g.enroll_embeddings("new", centres[:1], "another-model")
    with pytest.raises(ModelMismatchError):
        g.identify_embeddings(np.ones((1, 64), np.float32), MODEL)
    non_finite = (np.full((1, DIM), np.nan), np.full((1, DIM), np.inf))
    for bad in (np.zeros((1, DIM)), *non_finite, np.zeros((0, DIM)), "not an array"):
        with pytest.raises(InvalidArgumentError):
            g.enroll_embeddings("new", bad, MODEL)
    for bad_id in ("", "x" * 300, "tab\there", 5):
        with pytest.raises(InvalidArgumentError):
            g.enroll_embeddings(bad_id, centres[:1], MODEL)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        g.enroll_embeddings("new", centres[:1], MODEL, metadata={"x": object()})
    with pytest.raises(InvalidArgumentError):
        g.list_identities(cursor="%%%")
    with pytest.raises(InvalidArgumentError):
        g.identify_embeddings(centres[:1], MODEL, k=0)
    for bad_template in ("abc", 1.5, None, True):
        with pytest.raises(InvalidArgumentError):
            g.remove_template(bad_template)  # type: ignore[arg-type]
    for bad_cursor in (5, b"abc"):
        with pytest.raises(InvalidArgumentError):
            g.list_identities(cursor=bad_cursor)  # type: ignore[arg-type]
    assert "new" not in g  # nothing half-written by any failure above


def test_thresholds_and_rates_follow_the_one_rule(tmp_path, populated) -> None:  # type: ignore[no-untyped-def]
    """resolve_threshold validates as calibration.threshold_or_rate does (type, range, not both)."""
    g, centres, _ = populated
    assert g.resolve_threshold(threshold=np.float32(0.25)) == (pytest.approx(0.25), None)
    assert g.resolve_threshold(fpir=0.05)[1] == 0.05
    for bad in ({"threshold": True}, {"threshold": "0.5"}, {"threshold": float("nan")}, {"threshold": -1.5}):
        with pytest.raises(InvalidArgumentError):
            g.resolve_threshold(**bad)  # type: ignore[arg-type]
    for bad in ({"fpir": 0.0}, {"fpir": 1.0}, {"fpir": True}, {"fpir": float("inf")}, {"fpir": "0.01"}):
        with pytest.raises(InvalidArgumentError):
            g.identify_embeddings(centres[:1], MODEL, **bad)  # type: ignore[arg-type]
    for bad_default in (0.0, 1.0, True):
        with pytest.raises(InvalidArgumentError):
            Gallery(tmp_path / "other.fmg", default_fpir=bad_default)


def test_index_options_are_validated_before_anything_is_opened(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for bad in ({"kind": "ivf", "nprobes": 8}, {"kind": "annoy"}, "flat", {"rerank": "no"}):
        with pytest.raises(InvalidArgumentError):
            Gallery(tmp_path / "g.fmg", index=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "g.fmg").exists()
    for bad_option in ({"rerank": "no"}, {"nlist": True}, {"nprobe": 0}):
        with pytest.raises(InvalidArgumentError):
            IndexConfig(**bad_option)  # type: ignore[arg-type]
    with Gallery(tmp_path / "g.fmg", index={"kind": "hnsw", "ef_search": 32}) as g:  # a dict is accepted
        assert g.index_config == IndexConfig(kind="hnsw", ef_search=32)


def test_empty_gallery_and_missing_calibration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    probe = unit(np.random.default_rng(0).standard_normal((2, DIM)))
    with Gallery(tmp_path / "empty.fmg") as g:
        r = g.identify_embeddings(probe, MODEL, threshold=0.3)
        assert len(r) == 2 and r[0].is_unknown and r[0].candidates == () and r[0].gallery_size == 0
        with pytest.raises(CalibrationMissingError):  # no card for this model, no calibration given
            g.identify_embeddings(probe, MODEL)
        g.enroll_embeddings("a", probe[:1], MODEL)
        with pytest.raises(CalibrationMissingError):
            g.identify_embeddings(probe, MODEL, fpir=0.01)
        res = g.identify_embeddings(probe[:1], MODEL, threshold=0.5)[0]
        assert res.identity_id == "a" and res.candidates[0].estimated_fmr is None


def test_model_binding_survives_reopen(tmp_path, cal) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bound.fmg"
    with Gallery(path) as g:
        g.enroll_embeddings("a", unit(np.ones((1, DIM))), MODEL)
    with Gallery(path) as g:
        assert (g.model_id, g.dim) == (MODEL, DIM)
        with pytest.raises(ModelMismatchError):
            g.enroll_embeddings("b", unit(np.ones((1, DIM))), "other")
    with pytest.raises(ModelMismatchError):
        Gallery(path, model="w600k_mbf")  # a real card id: another model, another dim


def test_single_writer_lock_and_read_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "locked.fmg"
    writer = Gallery(path)
    writer.enroll_embeddings("a", unit(np.ones((1, DIM))), MODEL)
    with pytest.raises(GalleryLockedError):
        Gallery(path)
    reader = Gallery(path, read_only=True)
    assert reader.get("a").num_templates == 1
    with pytest.raises(GalleryError):
        reader.enroll_embeddings("b", unit(np.ones((1, DIM))), MODEL)
    writer.enroll_embeddings("b", unit(-np.ones((1, DIM))), MODEL)
    assert reader.refresh() and "b" in reader and reader.num_templates == 2
    reader.close()
    writer.close()
    Gallery(path).close()  # the lock is released on close
    with pytest.raises(GalleryError):
        Gallery(tmp_path / "missing.fmg", read_only=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GalleryError):
        Gallery(tmp_path / "file")


def test_index_repaired_and_rebuilt_on_open(tmp_path, cal) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "repair.fmg"
    rng = np.random.default_rng(5)
    templates, centres = identities(30, 2, rng)
    g = Gallery(path, calibration=cal)
    for i in range(20):
        g.enroll_embeddings(f"r{i}", templates[i], MODEL)
    g.save()  # index.faiss now holds 40 templates
    for i in range(20, 30):
        g.enroll_embeddings(f"r{i}", templates[i], MODEL)
    g.delete("r0")
    g._release()  # simulate a crash: no final save
    g = Gallery(path, calibration=cal)
    assert g.verify_consistency() == (58, 58)
    assert g.identify_embeddings(noisy(centres[25:26], 0.9, rng), MODEL)[0].identity_id == "r25"
    g.close()
    (path / "index.faiss").write_bytes(b"garbage")
    with Gallery(path, calibration=cal) as g:
        assert g.verify_consistency() == (58, 58)
    # a different index structure on open is rebuilt from the stored fp32 embeddings
    with Gallery(path, calibration=cal, index=IndexConfig(kind="hnsw")) as g:
        assert g.info().index.startswith("faiss:hnsw") and g.verify_consistency() == (58, 58)
    with Gallery(path, calibration=cal) as g:  # the last configuration is remembered
        assert g.index_config.kind == "hnsw"


def test_ivf_retrains_with_more_lists_as_the_gallery_grows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An IVF trained on the first templates gets more lists (and stays exact on re-rank) as N grows 4x."""
    rng = np.random.default_rng(21)
    templates, centres = identities(800, 1, rng)
    cfg = IndexConfig(kind="ivf", min_train=200, nprobe=16, rerank=True)
    path = tmp_path / "grow.fmg"
    lists = []
    with Gallery(path, index=cfg) as g:
        for i in range(800):
            g.enroll_embeddings(f"i{i:03d}", templates[i], MODEL)
            # let each background retrain land before the next write (a retrain process takes
            # longer to start than this loop takes to run), so every list count is seen
            assert g.wait_for_retrain(120)
            nlist = g._index._nlist  # type: ignore[union-attr]
            if nlist is not None and (not lists or lists[-1] != nlist):
                lists.append(nlist)
        assert g.wait_for_retrain(120)  # retrains run in the background: let the last one land
        if g._index._nlist != lists[-1]:  # type: ignore[union-attr]
            lists.append(g._index._nlist)  # type: ignore[union-attr]
        g.verify_consistency()
        hits = g.identify_embeddings(centres[::50], MODEL, k=1, threshold=-1.0)
        assert [h.identity_id for h in hits] == [f"i{i:03d}" for i in range(0, 800, 50)]
    assert lists[0] == cfg.nlist_for(200) and lists[-1] == cfg.nlist_for(800)  # trained at 200, retrained
    assert len(lists) >= 3 and all(b >= 2 * a for a, b in itertools.pairwise(lists))  # geometric
    with Gallery(path) as g:  # the trained list count survives a reopen (no needless retrain)
        assert g._index._nlist == lists[-1] and not g._index.needs_rebuild  # type: ignore[union-attr]
