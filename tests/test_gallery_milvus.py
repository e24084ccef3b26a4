"""The Milvus backend behind the same Gallery interface, against embedded milvus-lite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from _gallery_util import DIM, MODEL, identities, noisy

from facematch.errors import GalleryCorruptError
from facematch.gallery import Gallery
from facematch.gallery.gallery import DB_FILE


def _milvus_lite_or_skip() -> None:
    pytest.importorskip("pymilvus", reason="pymilvus not installed (pip install 'facematch[milvus]')")
    pytest.importorskip("milvus_lite", reason="milvus-lite not installed (pip install 'facematch[milvus]')")


def test_milvus_backend_matches_faiss(tmp_path: Path) -> None:
    _milvus_lite_or_skip()
    rng = np.random.default_rng(11)
    templates, centres = identities(30, 2, rng)
    probes = noisy(centres, 0.8, rng)
    path = tmp_path / "m.fmg"
    with Gallery(path, backend="milvus") as g:
        for i in range(30):
            g.enroll_embeddings(f"m{i:02d}", templates[i], MODEL)
        assert g.info().index.startswith("milvus:")
        res = g.identify_embeddings(probes, MODEL, k=3, threshold=0.2)
        assert [r.identity_id for r in res] == [f"m{i:02d}" for i in range(30)]
        g.delete("m03")
        g.remove_template(g.get("m04").template_ids[0])
        assert g.verify_consistency() == (57, 57)
        after = g.identify_embeddings(probes[3:4], MODEL, threshold=-1.0)[0]
        assert all(c.identity_id != "m03" for c in after.candidates)
    with Gallery(path) as g:  # the backend is remembered; the collection is reconciled on open
        assert g.backend == "milvus" and g.verify_consistency() == (57, 57)
        top = g.identify_embeddings(probes[:5], MODEL, k=3, threshold=-1.0)[0]
        milvus_scores = [c.similarity for c in top.candidates]
    with Gallery(path, backend="faiss") as g:  # switching engines rebuilds the derived index from SQLite
        top = g.identify_embeddings(probes[:5], MODEL, k=3, threshold=-1.0)[0]
        faiss_scores = [c.similarity for c in top.candidates]
    np.testing.assert_allclose(milvus_scores, faiss_scores, atol=1e-4)
    assert templates.shape[-1] == DIM


def test_galleries_sharing_one_milvus_keep_their_own_collections(tmp_path: Path) -> None:
    """Two galleries on one Milvus must not see, or repair away, each other's templates."""
    _milvus_lite_or_skip()
    rng = np.random.default_rng(12)
    uri = str(tmp_path / "shared-milvus.db")
    templates, centres = identities(6, 2, rng)
    with (
        Gallery(tmp_path / "a.fmg", backend="milvus", milvus_uri=uri) as a,
        Gallery(tmp_path / "b.fmg", backend="milvus", milvus_uri=uri) as b,
    ):
        for i in range(3):
            a.enroll_embeddings(f"a{i}", templates[i], MODEL)
        for i in range(3, 6):
            b.enroll_embeddings(f"b{i}", templates[i], MODEL)
        assert a.verify_consistency() == (6, 6) and b.verify_consistency() == (6, 6)
        hits = b.identify_embeddings(centres[:1], MODEL, k=6, threshold=-1.0)[0]
        assert {c.identity_id for c in hits.candidates} == {"b3", "b4", "b5"}
    with Gallery(tmp_path / "b.fmg", milvus_uri=uri) as b:  # reopening one reconciles only its own
        assert b.verify_consistency() == (6, 6)
    assert sorted(_rows_per_collection(uri).values()) == [6, 6]


def _rows_per_collection(uri: str) -> dict[str, int]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    try:
        return {
            name: int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])
            for name in client.list_collections()
        }
    finally:
        client.close()


def test_read_only_handle_never_writes_to_the_collection(tmp_path: Path) -> None:
    _milvus_lite_or_skip()
    rng = np.random.default_rng(13)
    templates, centres = identities(4, 2, rng)
    path = tmp_path / "r.fmg"
    with Gallery(path, backend="milvus") as g:
        for i in range(4):
            g.enroll_embeddings(f"r{i}", templates[i], MODEL)
        gone = g.get("r0").template_ids[0]
    with sqlite3.connect(path / DB_FILE) as db:  # the database moves on without the collection
        db.execute("DELETE FROM templates WHERE id=?", (gone,))
    with Gallery(path, read_only=True) as reader:
        assert gone in reader._index.ids()  # the reader leaves the writer's collection alone ...
        with pytest.raises(GalleryCorruptError):
            reader.verify_consistency()
        top = reader.identify_embeddings(templates[0, :1], MODEL, k=4, threshold=-1.0)[0]
        assert top.candidates[0].identity_id == "r0"  # ... and never returns the stale template
        assert reader.info().templates == 7
    with Gallery(path) as writer:  # the writer repairs it on open
        assert writer.verify_consistency() == (7, 7)
    assert centres.shape == (4, DIM)
