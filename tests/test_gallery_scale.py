"""Gallery at scale: the synthetic generator fitted to celeb24, the size-chosen default index
(oracles against brute-force numpy), aggregation over every template, FAISS threads per call."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _gallery_util import DIM, MODEL, unit

from facematch.errors import InvalidArgumentError
from facematch.eval.synthetic import SyntheticGallery, fit_synthetic, ks_2samp, pair_scores
from facematch.gallery import Gallery, IndexConfig
from facematch.gallery import config as config_module
from facematch.gallery.index import FaissIndex
from facematch.gallery.threads import PARALLEL_MIN_BATCH, cores, faiss_threads, thread_local_setting, threads_for

faiss = pytest.importorskip("faiss")


# ---- the synthetic generator, fitted to real embeddings -------------------------------------------
@pytest.fixture(scope="module")
def celeb24_embeddings(celeb24_dir: Path, matcher):  # type: ignore[no-untyped-def]
    """The default model's embeddings of 10 crops of each celeb24 identity."""
    from facematch.eval.data import list_identity_dir

    data = list_identity_dir(celeb24_dir)
    keep = np.concatenate([np.flatnonzero(data.labels == i)[:10] for i in range(len(data.identities))])
    emb, _ = matcher.embed_aligned_with_norms([str(data.paths[i]) for i in keep])
    return emb, data.labels[keep]


@pytest.fixture(scope="module")
def model(celeb24_embeddings):  # type: ignore[no-untyped-def]
    emb, labels = celeb24_embeddings
    return fit_synthetic(emb, labels, rounds=2, fit_sample=(120, 10), source="celeb24 subset")


def test_ks_statistic_matches_closed_form() -> None:
    a = np.arange(10, dtype=float)
    assert ks_2samp(a, a) == (0.0, 1.0)
    d, p = ks_2samp(a, a + 5)  # half the mass shifted past the other sample
    assert d == pytest.approx(0.5) and 0.0 < p < 0.5
    rng = np.random.default_rng(0)
    d, p = ks_2samp(rng.normal(size=4000), rng.normal(0.2, 1, size=4000))
    assert 0.05 < d < 0.12 and p < 1e-6
    assert ks_2samp(rng.normal(size=4000), rng.normal(size=4000))[1] > 1e-3


def test_synthetic_scores_match_celeb24(model, celeb24_embeddings) -> None:  # type: ignore[no-untyped-def]
    emb, labels = celeb24_embeddings
    check = model.check(emb, labels, n_identities=600)
    # the fitted moments hold, and the whole distributions are closer to celeb24 than two
    # halves of celeb24's own identities are to each other
    med = check.quantiles.index(0.5)
    assert check.synthetic_genuine[med] == pytest.approx(check.real_genuine[med], abs=0.03)
    assert check.ks_genuine < check.split_half_genuine
    assert check.ks_impostor < max(check.split_half_impostor, 0.03)
    _, real_i = pair_scores(emb, labels)
    random_i = pair_scores(unit(np.random.default_rng(0).standard_normal(emb.shape)), labels)[1]
    assert real_i.std() > 1.3 * random_i.std()  # why random vectors are the wrong benchmark
    sx, sl = model.sample(600, 10)
    assert pair_scores(sx, sl)[1].std() == pytest.approx(real_i.std(), rel=0.1)
    assert "| 0.5 |" in check.table() and "KS" in check.table()
    assert 20 < check.synthetic_centres["centre_effective_dim"] < 400


def test_streamed_gallery_is_deterministic_and_probes_find_their_identity(model) -> None:  # type: ignore[no-untyped-def]
    gal = SyntheticGallery(model, 700, 3, seed=5, block=256)  # several blocks, the last one partial
    parts = list(gal.chunks())
    ids = np.concatenate([p[0] for p in parts])
    owners = np.concatenate([p[1] for p in parts])
    x = np.concatenate([p[2] for p in parts])
    assert np.array_equal(ids, np.arange(1, 2101)) and np.array_equal(owners, gal.owners(ids))
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    again = np.concatenate([p[2] for p in SyntheticGallery(model, 700, 3, seed=5, block=256).chunks()])
    assert np.array_equal(x, again)
    q, who = gal.mated_probes(200, seed=2)
    assert np.unique(who).size == 200 and q.shape == (200, model.dim)
    s = q @ x.T
    assert np.mean(gal.owners(ids[s.argmax(1)]) == who) > 0.9  # a fresh view of an enrolled identity
    genuine = s[np.arange(200)[:, None], (who[:, None] * 3 + np.arange(3))].max(1)
    non = gal.non_mated_probes(200, seed=2) @ x.T
    assert np.median(genuine) > np.quantile(non.max(1), 0.9)  # strangers score lower than mates
    with pytest.raises(InvalidArgumentError):
        SyntheticGallery(model, 0)


# ---- the default index chosen by size ----------------------------------------------------------------
def test_auto_resolves_by_size_and_explicit_configs_win() -> None:
    auto = IndexConfig.auto()
    concrete = auto.resolve(512)
    assert auto.kind == "auto" and auto.describe() == "auto"
    assert (concrete.kind, concrete.storage, concrete.pq_m, concrete.rerank) == ("ivf", "pq4", 128, True)
    assert concrete.min_train == config_module.AUTO_FLAT_MAX and concrete.nlist is None
    assert concrete.nprobe_fraction == config_module.AUTO_NPROBE_FRACTION
    assert concrete.nlist_for(1_000_000) == 1000 and concrete.nprobe_for(1000) == 350
    assert concrete.describe() == "ivf/pq128x4/nlist=1*sqrt(N)/nprobe=0.35*nlist/rerank"
    # the re-rank width: 4x up to 1M templates, growing as sqrt(N / 1M) above (12x measured at 10M)
    widths = [concrete.rerank_factor_for(n) for n in (60_000, 1_000_000, 4_000_000, 10_000_000, 10**12)]
    assert widths == [4, 4, 8, 13, config_module.MAX_RERANK_FACTOR]
    assert IndexConfig(kind="ivf", rerank=True, rerank_factor=6).rerank_factor_for(10**9) == 6  # explicit: fixed
    assert auto.resolve(256).pq_m == 64 and auto.resolve(100).storage == "sq8"  # 100 is not a multiple of 8
    assert IndexConfig(nprobe=16).nprobe_for(8) == 8 and IndexConfig(nprobe_fraction=0.1).nprobe_for(95) == 10
    assert "nlist_scale" not in IndexConfig(kind="ivf").structure_key()  # indexes saved before it still load
    assert IndexConfig(kind="hnsw").resolve() == IndexConfig(kind="hnsw")
    assert "auto" in auto.choice_reason() and "explicit" in IndexConfig().choice_reason()
    assert IndexConfig.from_dict(auto.to_dict()) == auto
    for bad in ({"search_threads": -1}, {"nprobe_fraction": 0}, {"nprobe_fraction": 1.5}, {"nlist_scale": 0},
                {"storage": "pq4", "pq_m": 63}, {"rerank_from": 0}, {"rerank_from": 1.5},
                {"rerank_factor": config_module.MAX_RERANK_FACTOR + 1}):  # fmt: skip
        with pytest.raises(InvalidArgumentError):
            IndexConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        FaissIndex(100, IndexConfig(storage="pq", pq_m=16))  # 16 does not divide 100


def test_the_search_asks_the_index_for_the_grown_rerank_width(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    x = unit(np.random.default_rng(8).standard_normal((300, 2, DIM)))
    asked: list[int] = []
    real = FaissIndex.search

    def spy(self, q, k):  # type: ignore[no-untyped-def]
        asked.append(k)
        return real(self, q, k)

    monkeypatch.setattr(FaissIndex, "search", spy)
    fixed = IndexConfig(kind="ivf", storage="sq8", nprobe=8, rerank=True, rerank_factor=2, min_train=200)
    # 600 templates: a fixed width of 2, or 2 * sqrt(600 / 150) = 4 grown from 150 templates
    for name, cfg, width in (("fixed", fixed, 2), ("grown", replace(fixed, rerank_from=150), 4)):
        assert cfg.rerank_factor_for(600) == width
        with Gallery(tmp_path / f"{name}.fmg", index=cfg, synchronous="NORMAL") as g:
            for i in range(300):
                g.enroll_embeddings(f"p{i:03d}", x[i], MODEL)
            assert g.wait_for_retrain(60) and "exact until" not in g.info().index
            asked.clear()
            res = g.identify_embeddings(x[7, :1], MODEL, k=5, threshold=0.5)
            assert res[0].candidates[0].identity_id == "p007"
            # the first fetch: max(2k, 10) identities x 2 templates each, x2 slack, +16; times the width
            assert asked[0] == (10 * 2 * 2 + 16) * width, (name, asked)


def _brute(x: np.ndarray, owner: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact max-aggregated best identity and score per probe, over every template."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    ident = np.unique(owner)
    per = np.stack([s[:, owner == i].max(1) for i in ident], axis=1)
    return ident[per.argmax(1)], per.max(1)


def test_auto_default_against_bruteforce_on_synthetic_faces(tmp_path, model, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(config_module, "AUTO_FLAT_MAX", 2000)  # the IVF side of the rule, at test size
    gal = SyntheticGallery(model, 1500, 4, seed=3)
    ids, owner, x = (np.concatenate(p) for p in zip(*gal.chunks(), strict=True))
    probes, _ = gal.mated_probes(300, seed=4)
    with Gallery(tmp_path / "g.fmg", synchronous="NORMAL") as g:
        for i in range(gal.n_identities):
            g.enroll_embeddings(f"id{i:05d}", x[owner == i], "synthetic-512")
        assert g.wait_for_retrain(300)
        live = g.info().index
        assert "ivf/pq128x4" in live and "rerank" in live and "exact until" not in live, live
        res = g.identify_embeddings(probes, "synthetic-512", threshold=-1.0, k=3)
        assert int(ids.max()) == g.num_templates
    got = np.asarray([int(r.identity_id[2:]) for r in res])
    best, score = _brute(x, owner, probes)
    recall = float(np.mean(got == best))
    # 0.9x here: this model, fitted to 240 crops, clusters less than the 942-crop fit of
    # benchmarks/bench_gallery_scale.py (recall 0.992 at 1M in the Gallery); at 45 lists the 0.35
    # searched misses the best template's list for ~5% of probes (IVF-fp32 does the same).
    assert recall >= 0.88, f"identity recall@1 {recall:.3f} vs brute force ({live})"
    # re-ranked similarities are exact: every candidate's score is its identity's true max
    for r, p in zip(res[:60], probes[:60], strict=True):
        for c in r.candidates:
            assert c.similarity == pytest.approx(float(np.max(x[owner == int(c.identity_id[2:])] @ p)), abs=1e-5)
    hit = got == best
    assert np.allclose([r.candidates[0].similarity for r in np.asarray(res)[hit]], score[hit], atol=1e-5)


def test_ivf_pq_against_bruteforce_on_synthetic_faces(model) -> None:  # type: ignore[no-untyped-def]
    gal = SyntheticGallery(model, 1000, 3, seed=6)
    ids, _, x = (np.concatenate(p) for p in zip(*gal.chunks(), strict=True))
    probes, _ = gal.mated_probes(300, seed=4)
    index = FaissIndex(model.dim, IndexConfig(kind="ivf", storage="pq", pq_m=32, nprobe=76, min_train=1))
    with faiss_threads(faiss, 1):  # many small k-means: one thread is faster on a busy machine
        index.rebuild(ids, x)
    assert index.describe().startswith("faiss:ivf/pq32/nlist=76") and not index.exhaustive
    scores, got = index.search(probes, 10)
    ref = (probes.astype(np.float64) @ x.T.astype(np.float64)).argmax(1) + 1
    found = float(np.mean((got == ref[:, None]).any(1)))  # the best template among the 10 PQ candidates
    assert found >= 0.85, found
    exact = np.einsum("ij,ij->i", probes, x[got[:, 0] - 1])
    err = np.abs(scores[:, 0] - exact)
    assert 0 < err.mean() < 0.2  # 32-byte codes from 3,000 templates: rough scores (re-rank them)


def test_ivf_pq4_fast_scan_against_bruteforce_and_deletes(model) -> None:  # type: ignore[no-untyped-def]
    gal = SyntheticGallery(model, 1000, 3, seed=7)
    ids, _, x = (np.concatenate(p) for p in zip(*gal.chunks(), strict=True))
    probes, _ = gal.mated_probes(300, seed=5)
    cfg = IndexConfig(kind="ivf", storage="pq4", pq_m=128, nlist_scale=1.0, nprobe_fraction=0.25, min_train=1)
    index = FaissIndex(model.dim, cfg)
    with faiss_threads(faiss, 1):
        index.rebuild(ids, x)
    assert index.describe().startswith("faiss:ivf/pq128x4/nlist=55/nprobe=0.25*nlist") and not index.exhaustive
    assert faiss.extract_index_ivf(index._index).nprobe == 14  # ceil(0.25 * 55)
    _, got = index.search(probes, 20)
    ref = (probes.astype(np.float64) @ x.T.astype(np.float64)).argmax(1) + 1
    found = float(np.mean((got == ref[:, None]).any(1)))  # the best template among 20 fast-scan candidates
    assert found >= 0.75, found  # 0.82: a quarter of 55 lists on this loosely clustered test model
    gone = ref[:50]
    index.remove(gone)  # IVF fast-scan deletes in place: the removed templates are never returned
    _, after = index.search(probes[:50], 20)
    assert not np.isin(after, gone).any() and len(index) == x.shape[0] - np.unique(gone).size


def test_flat_default_below_the_mark_equals_bruteforce(tmp_path, model) -> None:  # type: ignore[no-untyped-def]
    gal = SyntheticGallery(model, 300, 3, seed=8)
    _, owner, x = (np.concatenate(p) for p in zip(*gal.chunks(), strict=True))
    probes, _ = gal.mated_probes(100, seed=1)
    with Gallery(tmp_path / "g.fmg", synchronous="NORMAL") as g:  # a new gallery: auto, exact while small
        for i in range(300):
            g.enroll_embeddings(f"id{i:05d}", x[owner == i], "synthetic-512")
        assert g.index_config.kind == "auto" and g.info().index.startswith("faiss:flat/fp32")
        res = g.identify_embeddings(probes, "synthetic-512", threshold=-1.0, k=1)
    best, score = _brute(x, owner, probes)
    assert [int(r.identity_id[2:]) for r in res] == best.tolist()
    assert np.allclose([r.candidates[0].similarity for r in res], score, atol=1e-5)


# ---- mean / topk_mean over every template of the candidates ------------------------------------------
def _at_cosine(p: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.standard_normal((cos.size, p.size))
    u -= np.outer(u @ p, p)
    u = unit(u)
    return unit(cos[:, None] * p[None, :] + np.sqrt(1 - cos[:, None] ** 2) * u)


def _brute_aggregate(
    x: np.ndarray, owner: np.ndarray, q: np.ndarray, method: str, top_k: int
) -> list[tuple[int, float]]:
    s = x.astype(np.float64) @ q.astype(np.float64)
    out = []
    for i in np.unique(owner):
        v = np.sort(s[owner == i])[::-1]
        out.append((int(i), float(v[0] if method == "max" else v.mean() if method == "mean" else v[:top_k].mean())))
    return sorted(out, key=lambda r: (-r[1], r[0]))


@pytest.mark.parametrize("method", ["mean", "topk_mean"])
def test_mean_aggregation_scores_identities_the_max_shortlist_leaves_out(tmp_path, method) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(11)
    p = unit(rng.standard_normal(DIM))
    with Gallery(tmp_path / method, index=IndexConfig(), synchronous="NORMAL") as g:
        x, owner = [], []
        for i in range(40):  # one very close template each, the rest far: high max, low mean
            v = _at_cosine(p, np.r_[0.9 - 0.001 * i, np.full(9, -0.3)], rng)
            g.enroll_embeddings(f"spiky{i:02d}", v, MODEL)
            x.append(v)
            owner += [i] * 10
        steady = _at_cosine(p, np.full(10, 0.6), rng)  # never near the top by max, best by mean
        g.enroll_embeddings("steady", steady, MODEL)
        x.append(steady)
        owner += [40] * 10
        res = g.identify_embeddings(p, MODEL, k=3, aggregation=method, threshold=-1.0)[0]
    ref = _brute_aggregate(np.concatenate(x), np.asarray(owner), p, method, 3)
    assert res.candidates[0].identity_id == "steady"
    assert [c.similarity for c in res.candidates] == pytest.approx([r[1] for r in ref[:3]], abs=1e-5)


@pytest.mark.parametrize("method", ["max", "mean", "topk_mean"])
def test_aggregation_equals_bruteforce_on_random_galleries(tmp_path, method) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(12)
    centres = unit(rng.standard_normal((150, DIM)))
    counts = rng.integers(1, 12, 150)
    owner = np.repeat(np.arange(150), counts)
    x = unit(
        centres[owner] * rng.uniform(0.3, 0.9, owner.size)[:, None] + 0.5 * unit(rng.standard_normal((owner.size, DIM)))
    )
    q = unit(centres[:40] + 0.8 * unit(rng.standard_normal((40, DIM))))
    with Gallery(tmp_path / method, index=IndexConfig(), synchronous="NORMAL", aggregation_top_k=2) as g:
        for i in range(150):
            g.enroll_embeddings(f"i{i:03d}", x[owner == i], MODEL)
        res = g.identify_embeddings(q, MODEL, k=7, aggregation=method, threshold=-1.0)
        # one probe a call: the ranking reads only that probe's identities (no batch to pick from)
        single = [g.identify_embeddings(q[j], MODEL, k=7, aggregation=method, threshold=-1.0)[0] for j in range(8)]
    for j, r in enumerate(res):
        ref = _brute_aggregate(x, owner, q[j], method, 2)[:7]
        assert [c.similarity for c in r.candidates] == pytest.approx([s for _, s in ref], abs=1e-5)
        assert [int(c.identity_id[1:]) for c in r.candidates] == [i for i, _ in ref]
    for j, r in enumerate(single):
        assert [c.identity_id for c in r.candidates] == [c.identity_id for c in res[j].candidates]
        batched = [c.similarity for c in res[j].candidates]
        assert [c.similarity for c in r.candidates] == pytest.approx(batched, abs=1e-6)


# ---- FAISS threads per call ----------------------------------------------------------------------------
def test_faiss_thread_count_is_per_thread_and_restored() -> None:
    assert thread_local_setting(faiss)  # GNU/LLVM OpenMP: nthreads-var is per thread
    before = faiss.omp_get_max_threads()
    seen: dict[str, int] = {}

    def other() -> None:
        seen["other"] = faiss.omp_get_max_threads()

    with faiss_threads(faiss, 1):
        seen["inside"] = faiss.omp_get_max_threads()
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen["inside"] == 1 and seen["other"] == before and faiss.omp_get_max_threads() == before
    assert threads_for(1, None) == 1 and threads_for(PARALLEL_MIN_BATCH - 1, None) == 1
    assert threads_for(PARALLEL_MIN_BATCH, None) == cores() and threads_for(1, 3) == 3


def test_search_uses_one_thread_per_probe_and_concurrent_searches_agree() -> None:
    rng = np.random.default_rng(4)
    x = unit(rng.standard_normal((5000, DIM)))
    index = FaissIndex(DIM, IndexConfig(device="cpu"))
    index.add(np.arange(5000), x)
    used: list[int] = []
    real = index._index

    class Spy:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def search(self, q: np.ndarray, k: int) -> object:
            used.append(faiss.omp_get_max_threads())
            return real.search(q, k)

    index._index = Spy()
    index.search(x[:1], 5)
    index.search(x[:PARALLEL_MIN_BATCH], 5)
    assert used == [1, cores()]
    index._index = real
    # an enrolment's add (and a deletion) is as small as a one-probe search: one thread too
    ivf = FaissIndex(DIM, IndexConfig(kind="ivf", storage="pq4", pq_m=32, nlist=16, min_train=1, device="cpu"))
    ivf.rebuild(np.arange(5000), x)
    inner, calls = ivf._index, []

    class Writes:
        def __getattr__(self, name: str) -> object:
            return getattr(inner, name)

        def add_with_ids(self, v: np.ndarray, ids: np.ndarray) -> object:
            calls.append(("add", faiss.omp_get_max_threads()))
            return inner.add_with_ids(v, ids)

        def remove_ids(self, sel: object) -> object:
            calls.append(("remove", faiss.omp_get_max_threads()))
            return inner.remove_ids(sel)

    ivf._index = Writes()
    ivf.add(np.arange(5000, 5004), x[:4])
    ivf.remove(np.arange(5000, 5004))
    assert calls == [("add", 1), ("remove", 1)]
    ivf._index = inner
    assert len(ivf) == 5000 and ivf.search(x[7:8], 1)[1][0, 0] == 7
    expected = index.search(x[:200], 3)[1]
    errors: list[str] = []

    def worker(rows: slice) -> None:
        for _ in range(20):
            got = np.concatenate([index.search(x[i : i + 1], 3)[1] for i in range(rows.start, rows.stop)])
            if not np.array_equal(got, expected[rows]):
                errors.append(f"{rows}")

    threads = [threading.Thread(target=worker, args=(slice(i * 50, i * 50 + 50),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pinned = FaissIndex(DIM, replace(IndexConfig(device="cpu"), search_threads=0))  # 0: FAISS's own setting
    pinned.add(np.arange(100), x[:100])
    assert pinned.search(x[:1], 1)[1][0, 0] == 0
