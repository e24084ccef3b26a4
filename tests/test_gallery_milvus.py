"""The Milvus backend behind the same Gallery interface, against embedded milvus-lite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _gallery_util import DIM, MODEL, identities, noisy

from facematch.gallery import Gallery


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
