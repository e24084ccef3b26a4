"""The PyTorch GPU path, run on CPU torch: the torch embedder against ONNX Runtime on real faces, and the
torch flat index against FAISS (exact) and a real gallery. The same code runs with ``device="cuda"``
on a GPU (benchmarks/gpu_check.sh)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from _gallery_util import unit

from facematch.errors import BackendUnavailableError, InvalidArgumentError, ModelError
from facematch.gallery.config import IndexConfig
from facematch.gallery.index import FaissIndex
from facematch.model_files import load_card

torch = pytest.importorskip("torch")

from facematch.gallery.torch_index import TorchIndex  # noqa: E402
from facematch.zoo.torch_embedder import TorchEmbedder, batch_buckets, card_arch  # noqa: E402


@pytest.fixture(scope="module")
def crops(celeb24_dir: Path) -> np.ndarray:
    files = sorted(p for p in celeb24_dir.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    picked = files[:: max(1, len(files) // 48)][:48]
    return np.stack([cv2.imread(str(p)) for p in picked])


@pytest.fixture(scope="module")
def torch_embedder() -> TorchEmbedder:
    return TorchEmbedder.load("w600k_mbf", device="cpu", max_batch=16)  # ported from the ONNX weights


# ---- the embedder ---------------------------------------------------------------------------------
def test_torch_embedder_matches_onnx_runtime_on_pack_faces(matcher, torch_embedder: TorchEmbedder, crops) -> None:  # type: ignore[no-untyped-def]
    ref, ref_norms = matcher.embedder.embed(crops)
    got, norms = torch_embedder.embed(crops)
    cos = np.sum(ref * got, axis=1)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert cos.min() >= 0.999, cos.min()  # the bar; fp32 on CPU gives ~1 - 1e-6
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-3)
    assert torch_embedder.providers == ["torch-cpu"]
    empty = torch_embedder.embed(np.zeros((0, 112, 112, 3), np.uint8))
    assert empty[0].shape == (0, 512) and empty[1].shape == (0,)


def test_fp16_and_buckets_on_cpu(matcher, torch_embedder: TorchEmbedder, crops) -> None:  # type: ignore[no-untyped-def]
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32) and batch_buckets(24) == (1, 2, 4, 8, 16, 24)
    fp16 = TorchEmbedder.load("w600k_mbf", device="cpu", precision="fp16", max_batch=8, self_check=False)
    ref, _ = matcher.embedder.embed(crops[:10])
    got, _ = fp16.embed(crops[:10])  # batches of 8 and 2
    assert np.sum(ref * got, axis=1).min() >= 0.999
    assert fp16.bucket_for(3) == 4 and fp16.bucket_for(8) == 8
    with pytest.raises(InvalidArgumentError, match="max_batch"):
        fp16.run_tensor(torch.zeros((9, 3, 112, 112), dtype=torch.float16))


def test_faces_matcher_composes_it_unchanged(matcher, package_images: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from facematch.matcher import FaceMatcher

    tm = FaceMatcher(providers=["torch-cpu"], workers=1)
    assert tm.providers == {"detector": ["CPUExecutionProvider"], "embedder": ["torch-cpu"]}
    img = next(iter(package_images.values()))
    a, b = matcher.embed(img)[0], tm.embed(img)[0]
    assert float(a.vector @ b.vector) >= 0.999 and a.face is not None and b.face is not None
    assert np.allclose(a.face.box, b.face.box)  # the same detector on the same provider


def test_refusals(monkeypatch: pytest.MonkeyPatch, torch_embedder: TorchEmbedder) -> None:
    card = torch_embedder.card
    assert card_arch(card) == "mbf_fc"
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="sees no CUDA GPU"):
            TorchEmbedder(torch_embedder.module, card, device="cuda")
    with pytest.raises(InvalidArgumentError, match="CUDA graphs"):
        TorchEmbedder(torch_embedder.module, card, device="cpu", mode="graphs")
    with pytest.raises(InvalidArgumentError, match="not an embedding card"):
        TorchEmbedder(torch_embedder.module, load_card("scrfd_500m_bnkps"), device="cpu")
    with pytest.raises(InvalidArgumentError, match="architecture"):
        TorchEmbedder.load(card.model_copy(update={"id": "unknown_model"}), device="cpu")
    # a wrong architecture is caught by the structural port or by the self-check against ONNX
    with pytest.raises((InvalidArgumentError, ModelError)):
        TorchEmbedder.load(card, device="cpu", arch="r18")


# ---- the torch flat index ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = unit(rng.standard_normal((6000, 64)))
    ids = np.arange(x.shape[0], dtype=np.int64) * 3 + 7
    q = unit(x[rng.choice(x.shape[0], 50, replace=False)] + 0.5 * rng.standard_normal((50, 64)))
    return x, ids, q


def test_torch_flat_is_exact_against_faiss(vectors, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    x, ids, q = vectors
    monkeypatch.setattr("facematch.gallery.torch_index.SCAN_ROWS", 1000)  # several blocks: the running top-k
    faiss_idx = FaissIndex(64, IndexConfig(device="cpu"))
    tidx = TorchIndex(64, IndexConfig(engine="torch", device="cpu"))
    assert tidx.describe() == "torch:flat/fp32@cpu"
    faiss_idx.add(ids, x)
    for start in range(0, x.shape[0], 1500):  # grown in place over several adds
        tidx.add(ids[start : start + 1500], x[start : start + 1500])
    fs, fi = faiss_idx.search(q, 10)
    ts, ti = tidx.search(q, 10)
    np.testing.assert_array_equal(ti, fi)
    np.testing.assert_allclose(ts, fs, atol=1e-5)
    # remove in place (the last rows fill the holes), then compare again
    gone = ids[::7]
    faiss_idx.remove(gone)
    tidx.remove(gone)
    tidx.remove(np.array([-5, 10**12]))  # unknown ids are ignored
    np.testing.assert_array_equal(tidx.ids(), faiss_idx.ids())
    fs, fi = faiss_idx.search(q, 10)
    ts, ti = tidx.search(q, 10)
    np.testing.assert_array_equal(ti, fi)
    # no 2048 limit, and padding past the size
    _, big = tidx.search(q[:2], 5000)
    assert big.shape == (2, 5000) and (big >= 0).all() and len(set(big[0].tolist())) == 5000
    _, over = tidx.search(q[:1], len(tidx) + 3)
    assert over[0, -3:].tolist() == [-1, -1, -1]
    with pytest.raises(InvalidArgumentError, match="already"):
        tidx.add(ids[1:2], x[1:2])


@pytest.mark.parametrize("storage", ["fp16", "sq8"])
def test_compressed_storage_keeps_the_ranking(vectors, storage: str) -> None:  # type: ignore[no-untyped-def]
    x, ids, q = vectors
    exact = TorchIndex(64, IndexConfig(engine="torch", device="cpu"))
    exact.rebuild(ids, x)
    small = TorchIndex(64, IndexConfig(engine="torch", device="cpu", storage=storage))  # type: ignore[arg-type]
    small.rebuild(ids, x)
    assert small.memory_bytes() <= exact.memory_bytes() // (2 if storage == "fp16" else 4)
    es, ei = exact.search(q, 10)
    ss, si = small.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ei.tolist(), si.tolist(), strict=True)])
    assert recall >= (0.99 if storage == "fp16" else 0.9), recall
    assert np.abs(ss[:, 0] - es[:, 0]).max() < (2e-3 if storage == "fp16" else 2e-2)


def test_sq8_scale_widens_as_wider_vectors_arrive() -> None:
    rng = np.random.default_rng(12)
    spread = np.ones(64, np.float32)
    spread[:8] = 5.0  # a few dimensions carry most of the variance, as in real embeddings
    x = unit(rng.standard_normal((4000, 64)) * spread)
    ids = np.arange(len(x), dtype=np.int64)
    q = unit(x[:40] + 0.3 * unit(rng.standard_normal((40, 64)) * spread))
    exact = TorchIndex(64, IndexConfig(engine="torch", device="cpu"))
    exact.rebuild(ids, x)
    _, ei = exact.search(q, 10)
    grown = TorchIndex(64, IndexConfig(engine="torch", device="cpu", storage="sq8"))
    first = unit(np.eye(64, dtype=np.float32)[20:21])  # a first vector with nothing in the wide dimensions
    grown.add(np.array([10**6]), first)
    for start in range(0, len(x), 1000):
        grown.add(ids[start : start + 1000], x[start : start + 1000])
    grown.remove(np.array([10**6]))
    _, gi = grown.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ei.tolist(), gi.tolist(), strict=True)])
    assert recall >= 0.9, recall


def test_torch_index_config() -> None:
    with pytest.raises(InvalidArgumentError, match="flat"):
        IndexConfig(engine="torch", kind="ivf")
    with pytest.raises(InvalidArgumentError, match="engine"):
        IndexConfig(engine="cupy")  # type: ignore[arg-type]
    cfg = IndexConfig(engine="torch", storage="sq8", rerank=True)
    assert not cfg.needs_training and cfg.describe() == "torch/flat/sq8/rerank"
    assert IndexConfig.from_dict(cfg.to_dict()) == cfg
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
            TorchIndex(8, IndexConfig(engine="torch", device="gpu"))


def test_gallery_on_the_torch_index(tmp_path: Path, matcher, wild_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from facematch.gallery import Gallery

    cfg = {"engine": "torch", "device": "cpu"}
    with Gallery.open(tmp_path / "g.fmg", matcher=matcher, index=cfg) as g:
        g.enroll("obama", [wild_dir / "obama.jpg"])
        g.enroll("obama_again", [wild_dir / "obama2.jpg"])
        assert g.info().index == "torch:flat/fp32@cpu"
        g.delete("obama_again")
        res = g.identify(wild_dir / "obama2.jpg")
        assert res.candidates[0].identity_id == "obama"
    with Gallery.open(tmp_path / "g.fmg", matcher=matcher) as again:  # the stored config; filled from the store
        assert again.info().index == "torch:flat/fp32@cpu" and again.num_templates == 1
        assert again.identify(wild_dir / "obama2.jpg").candidates[0].identity_id == "obama"


def test_int8_torch_index_with_rerank_gives_exact_scores(tmp_path: Path, matcher, wild_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from facematch.gallery import Gallery

    people = {"obama": "obama.jpg", "biden": "biden.jpg", "kit": "kit_harington1.jpg", "rose": "rose_leslie1.jpg"}
    probe = wild_dir / "obama2.jpg"
    found = {}
    for name, cfg in (("exact", {"device": "cpu"}), ("sq8", {"engine": "torch", "storage": "sq8", "rerank": True,
                                                             "device": "cpu"})):  # fmt: skip
        with Gallery.open(tmp_path / f"{name}.fmg", matcher=matcher, index=cfg) as g:
            for ident, file in people.items():
                g.enroll(ident, [wild_dir / file])
            found[name] = g.identify(probe, k=4).candidates
    assert [c.identity_id for c in found["sq8"]] == [c.identity_id for c in found["exact"]]
    for a, b in zip(found["sq8"], found["exact"], strict=True):
        assert abs(a.similarity - b.similarity) < 1e-5  # re-scored from the stored fp32 embeddings
