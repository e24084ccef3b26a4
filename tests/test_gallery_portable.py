"""Gallery export/import: one portable file, a faithful round trip, another model's templates refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _gallery_util import DIM, MODEL, identities
from typer.testing import CliRunner

from facematch.errors import DuplicateIdentityError, GalleryError, InvalidArgumentError, ModelMismatchError
from facematch.gallery import Gallery
from facematch.gallery.cli import gallery_app
from facematch.gallery.portable import FORMAT_VERSION


@pytest.fixture()
def source(tmp_path: Path) -> Gallery:
    rng = np.random.default_rng(7)
    views, _ = identities(30, 3, rng)
    g = Gallery(tmp_path / "src.fmg")
    for i in range(30):
        g.enroll_embeddings(
            f"id{i:02d}", views[i], MODEL, metadata={"n": i, "tag": "é"}, sources=[f"{i}/a", f"{i}/b", None]
        )
    g.remove_template(g.get("id03").template_ids[0])
    for t in g.get("id04").template_ids:  # an identity left without templates is kept too
        g.remove_template(t)
    return g


def _everything(g: Gallery) -> dict[str, tuple[dict, list[tuple[str | None, list[float]]]]]:
    out = {}
    page = g.list_identities(limit=1000)
    for info in page.items:
        ids, vecs = g._store.embeddings(info.template_ids, g.dim)
        sources = g._store.template_sources(info.template_ids)
        out[info.identity_id] = (info.metadata, [(sources[int(t)], v.tolist()) for t, v in zip(ids, vecs, strict=True)])
    return out


def test_round_trip_keeps_identities_metadata_sources_and_templates(source: Gallery, tmp_path: Path) -> None:
    out = tmp_path / "backup.zip"
    info = source.export_to(out)
    assert (info.identities, info.templates, info.model_id, info.dim) == (30, 30 * 3 - 1 - 3, MODEL, DIM)
    with zipfile.ZipFile(out) as zf:  # the documented format, readable without facematch
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["format"] == "facematch-gallery" and manifest["format_version"] == FORMAT_VERSION
        assert manifest["card_sha256"] is None  # no card for the synthetic model
        records = [json.loads(x) for x in zf.read("identities.jsonl").decode().splitlines()]
        with zf.open("templates.npy") as f:
            arr = np.load(f)
    assert arr.dtype == np.float32 and arr.shape == (info.templates, DIM)
    assert [r["identity_id"] for r in records] == sorted(r["identity_id"] for r in records)
    assert sum(r["templates"] for r in records) == len(arr) and records[4]["templates"] == 0
    dest = Gallery(tmp_path / "dest.fmg")
    rep = dest.import_from(out)
    assert (rep.model_id, len(rep.imported), rep.skipped, rep.templates) == (MODEL, 30, (), info.templates)
    assert (dest.model_id, dest.dim, len(dest), dest.num_templates) == (MODEL, DIM, 30, info.templates)
    got, want = _everything(dest), _everything(source)
    assert {k: (m, [s for s, _ in t]) for k, (m, t) in got.items()} == {
        k: (m, [s for s, _ in t]) for k, (m, t) in want.items()
    }
    for k, (_, templates) in want.items():  # fp32 out, fp32 in (re-checked as unit vectors: last-bit changes)
        assert np.allclose([v for _, v in got[k][1]], [v for _, v in templates], atol=1e-6, rtol=0)
    probe = arr[5]
    a = source.identify_embeddings(probe[None], MODEL, k=5, threshold=0.5)[0]
    b = dest.identify_embeddings(probe[None], MODEL, k=5, threshold=0.5)[0]
    # the same ranking; the scores agree to fp32 rounding (the import re-normalises each template,
    # so a self-match can read 1.0 in one gallery and 0.99999988 in the other)
    assert [c.identity_id for c in a.candidates] == [c.identity_id for c in b.candidates]
    assert np.allclose([c.similarity for c in a.candidates], [c.similarity for c in b.candidates], atol=1e-6, rtol=0)
    dest.verify_consistency()


def test_import_conflicts_and_refusals(source: Gallery, tmp_path: Path) -> None:
    out = tmp_path / "backup.zip"
    source.export_to(out)
    dest = Gallery(tmp_path / "dest.fmg")
    dest.enroll_embeddings("id07", np.eye(DIM, dtype=np.float32)[:1], MODEL)
    with pytest.raises(DuplicateIdentityError):
        dest.import_from(out)
    assert len(dest) == 1  # nothing written
    rep = dest.import_from(out, on_existing="skip")
    assert rep.skipped == ("id07",) and len(rep.imported) == 29 and len(dest) == 30
    assert dest.get("id07").num_templates == 1  # kept as it was
    with pytest.raises(InvalidArgumentError):
        dest.import_from(out, on_existing="replace")  # type: ignore[arg-type]
    # another model's gallery refuses the file before writing anything
    other = Gallery(tmp_path / "other.fmg")
    other.enroll_embeddings("x", np.eye(64, dtype=np.float32)[:1], "another-model")
    with pytest.raises(ModelMismatchError):
        other.import_from(out)
    assert len(other) == 1
    with pytest.raises(GalleryError):
        Gallery(tmp_path / "empty.fmg").export_to(tmp_path / "e.zip")  # nothing bound: nothing to export
    for bad in (b"not a zip", _zip({"manifest.json": b'{"format": "other"}'})):
        p = tmp_path / "bad.zip"
        p.write_bytes(bad)
        with pytest.raises(InvalidArgumentError):
            dest.import_from(p)
    newer = _rewrite(out, tmp_path / "newer.zip", lambda m: {**m, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(InvalidArgumentError, match="format"):
        Gallery(tmp_path / "n.fmg").import_from(newer)
    read_only = Gallery(tmp_path / "dest.fmg", read_only=True)
    with pytest.raises(GalleryError):
        read_only.import_from(out)


def test_same_model_id_from_another_file_is_refused(tmp_path: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    g = Gallery(tmp_path / "real.fmg", matcher=matcher)
    g.enroll_embeddings("a", np.eye(matcher.dim, dtype=np.float32)[:2], matcher.model_id)
    out = tmp_path / "real.zip"
    g.export_to(out)
    with zipfile.ZipFile(out) as zf:
        assert json.loads(zf.read("manifest.json"))["card_sha256"] == matcher.embedder_card.sha256
    forged = _rewrite(out, tmp_path / "forged.zip", lambda m: {**m, "card_sha256": "0" * 64})
    fresh = Gallery(tmp_path / "fresh.fmg")
    with pytest.raises(ModelMismatchError, match="another"):
        fresh.import_from(forged)
    assert len(fresh) == 0
    assert fresh.import_from(out).templates == 2


def test_cli_export_import(source: Gallery, tmp_path: Path) -> None:
    path = source.path
    source.close()
    runner = CliRunner()
    out = tmp_path / "b.zip"
    r = runner.invoke(gallery_app, ["export", str(path), str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["identities"] == 30
    r = runner.invoke(gallery_app, ["import", str(tmp_path / "new.fmg"), str(out)])
    assert r.exit_code == 0 and r.output.startswith("30 identities"), r.output
    r = runner.invoke(gallery_app, ["import", str(tmp_path / "new.fmg"), str(out)])
    assert r.exit_code == 2 and "duplicate_identity" in r.output and "pass --skip-existing" in r.output
    r = runner.invoke(gallery_app, ["import", str(tmp_path / "new.fmg"), str(out), "--skip-existing", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["skipped"] == 30


def _zip(members: dict[str, bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _rewrite(src: Path, dest: Path, change) -> Path:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["manifest.json"] = json.dumps(change(json.loads(members["manifest.json"]))).encode()
    dest.write_bytes(_zip(members))
    return dest
