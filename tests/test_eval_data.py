"""Evaluation inputs (identity folders, metadata, pair lists) and the embedding cache."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from facematch.errors import InvalidArgumentError
from facematch.eval.cache import CachedEmbedding, EmbeddingCache, content_hash, default_cache_dir
from facematch.eval.data import list_identity_dir, read_groups, read_pairs


def _touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_list_identity_dir(tmp_path: Path) -> None:
    _touch(tmp_path / "bob" / "2.png")
    _touch(tmp_path / "bob" / "1.jpg")
    _touch(tmp_path / "bob" / "notes.txt")
    _touch(tmp_path / "alice" / "a.PNG")
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / ".hidden" / "x.png")
    ids = list_identity_dir(tmp_path)
    assert ids.identities == ["alice", "bob"]
    assert [p.name for p in ids.paths] == ["a.PNG", "1.jpg", "2.png"]
    np.testing.assert_array_equal(ids.labels, [0, 1, 1])


def test_list_identity_dir_refuses_too_few_identities(tmp_path: Path) -> None:
    _touch(tmp_path / "only" / "1.png")
    with pytest.raises(InvalidArgumentError, match="two identity"):
        list_identity_dir(tmp_path)
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        list_identity_dir(tmp_path / "nope")


def test_read_groups(tmp_path: Path) -> None:
    meta = tmp_path / "ids.csv"
    meta.write_text("identity,gender,images\nann,F,3\nbob,M,2\ncid,,1\n")
    assert read_groups(meta, "gender", ["ann", "bob", "cid", "dan"]) == {"ann": "F", "bob": "M"}
    with pytest.raises(InvalidArgumentError, match="no column 'age'"):
        read_groups(meta, "age", ["ann"])
    with pytest.raises(InvalidArgumentError, match="not found"):
        read_groups(tmp_path / "missing.csv", "gender", ["ann"])


def test_lfw_pairs_with_folds(tmp_path: Path) -> None:
    _touch(tmp_path / "Ann" / "Ann_0001.jpg")
    f = tmp_path / "pairs.txt"
    f.write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t3\nCid\t4\t5\nCid\t1\tDan\t2\n")
    pl = read_pairs(f)
    assert pl.source_format == "lfw" and len(pl) == 4
    assert pl.a[0] == tmp_path / "Ann" / "Ann_0001.jpg"
    assert pl.b[1] == tmp_path / "Bob" / "Bob_0003.jpg"
    np.testing.assert_array_equal(pl.same, [True, False, True, False])
    assert pl.folds is not None
    np.testing.assert_array_equal(pl.folds, [0, 0, 1, 1])


def test_lfw_pairs_without_header_and_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text("Ann 1 2\n")
    pl = read_pairs(f, root=tmp_path / "imgs")
    assert pl.folds is None and pl.a[0] == tmp_path / "imgs" / "Ann" / "Ann_0001.jpg"
    f.write_text("Ann 1\n")
    with pytest.raises(InvalidArgumentError, match="LFW pair line"):
        read_pairs(f)


def test_csv_pairs_with_and_without_header(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text("a,b,same\nx.jpg,y.jpg,1\nx.jpg,z.jpg,false\n")
    pl = read_pairs(f)
    assert pl.source_format == "csv" and pl.a == [tmp_path / "x.jpg"] * 2
    np.testing.assert_array_equal(pl.same, [True, False])
    f.write_text("x.jpg,/abs/y.jpg,0\n")
    pl = read_pairs(f)
    assert pl.b == [Path("/abs/y.jpg")] and not pl.same[0]
    f.write_text("a,b,same\nx.jpg,y.jpg,maybe\n")
    with pytest.raises(InvalidArgumentError, match="maybe"):
        read_pairs(f)


def test_labels_csv_gives_all_single_person_pairs(tmp_path: Path) -> None:
    f = tmp_path / "labels.csv"
    f.write_text("file,identities\na1.jpg,ann\na2.jpg,ann\nb1.jpg,bob\ngroup.jpg,ann;bob\nx.png,unlabelled\n")
    pl = read_pairs(f)
    assert pl.source_format == "labels" and len(pl) == 3
    assert int(pl.same.sum()) == 1
    assert dict(pl.excluded).keys() == {"group.jpg", "x.png"}


def test_read_pairs_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="not found"):
        read_pairs(tmp_path / "none.txt")
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(InvalidArgumentError, match="empty"):
        read_pairs(tmp_path / "e.txt")


def test_cache_roundtrip_failures_and_permissions(tmp_path: Path) -> None:
    h1, h2 = content_hash(b"one"), content_hash(b"two")
    vec = np.arange(4, dtype=np.float32)
    with EmbeddingCache(tmp_path / "c") as cache:
        cache.put_many(
            "pipe", [(h1, CachedEmbedding("ok", vec, 3.5)), (h2, CachedEmbedding("no_face", None, None, "none"))]
        )
        got = cache.get_many([h1, h2, content_hash(b"three")], "pipe")
        assert set(got) == {h1, h2}
        assert got[h1].status == "ok" and got[h1].norm == 3.5
        assert got[h1].vector is not None
        np.testing.assert_array_equal(got[h1].vector, vec)
        assert got[h2].status == "no_face" and got[h2].vector is None and got[h2].message == "none"
        assert cache.get_many([h1], "other-model") == {}
        assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600
    with EmbeddingCache(tmp_path / "c") as again:  # persisted
        assert set(again.get_many([h1], "pipe")) == {h1}


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACEMATCH_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("FACEMATCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "facematch"
