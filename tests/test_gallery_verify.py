"""1:1 against an enrolled identity: Gallery.verify / verify_embedding, the CLI, on real photos and models.

Oracle: the probe's embedding against each enrolled image's embedding by brute force (FaceMatcher.embed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _gallery_util import DIM, MODEL, calibration, unit
from typer.testing import CliRunner

from facematch.errors import (
    CalibrationMissingError,
    GalleryError,
    IdentityNotFoundError,
    InvalidArgumentError,
    ModelMismatchError,
    NoTemplatesError,
)
from facematch.gallery import Gallery
from facematch.gallery.cli import gallery_app
from facematch.types import IdentityVerifyResult

OBAMA = ["obama.jpg", "obama2.jpg", "obama4.jpg"]


@pytest.fixture()
def gallery(tmp_path: Path, wild_dir: Path, matcher) -> Gallery:  # type: ignore[no-untyped-def]
    g = Gallery(tmp_path / "g.fmg", matcher=matcher)
    g.enroll("obama", [wild_dir / n for n in OBAMA], metadata={"team": "red"})
    g.enroll("biden", [wild_dir / "biden.jpg"])
    for i in range(20):  # a larger gallery: identification thresholds rise with it, 1:1 ones do not
        g.enroll_embeddings(
            f"filler{i:02d}", unit(np.random.default_rng(i).standard_normal((3, matcher.dim))), matcher.model_id
        )
    return g


def test_verify_against_enrolled_identity_equals_brute_force(gallery: Gallery, wild_dir: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    probe = wild_dir / "obama3.jpg"
    res = gallery.verify("obama", probe)
    assert isinstance(res, IdentityVerifyResult)
    q = matcher.embed(probe)[0]
    # enrolment keeps the largest of all faces (full-size detection); the probe is found coarse-first
    refs = [matcher.embed(wild_dir / n, faces="all", max_faces=1)[0].vector for n in OBAMA]
    sims = sorted((float(r @ q.vector) for r in refs), reverse=True)
    assert [t.similarity for t in res.templates] == pytest.approx(sims, abs=1e-5)
    tids = gallery.get("obama").template_ids
    assert sorted(t.template_id for t in res.templates) == sorted(tids)
    assert res.similarity == pytest.approx(sims[0], abs=1e-5) and res.aggregation == "max"
    # the 1:1 threshold of the card (not the FPIR one of a 23-identity gallery)
    thr, target = matcher.resolve_threshold()
    assert res.threshold == pytest.approx(thr) and res.target_fmr == target
    assert res.threshold != pytest.approx(gallery.resolve_threshold()[0])
    assert res.is_match and res.metadata == {"team": "red"} and res.model_id == matcher.model_id
    assert np.allclose(res.face.box, q.face.box, atol=0.05) and res.best_template_id == res.templates[0].template_id
    other = gallery.verify("biden", probe, fmr=1e-4)
    assert (
        not other.is_match
        and other.target_fmr == 1e-4
        and other.threshold == pytest.approx(matcher.threshold_for(1e-4))
    )
    assert len(other.templates) == 1
    strict = gallery.verify("obama", probe, threshold=0.99)
    assert not strict.is_match and strict.threshold == 0.99 and strict.target_fmr is None
    assert json.loads(json.dumps(res.to_dict()))["templates"][0]["template_id"] == res.templates[0].template_id


def test_verify_uses_the_galleries_aggregation(tmp_path: Path, wild_dir: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    with Gallery(tmp_path / "m.fmg", matcher=matcher, aggregation="mean") as g:
        g.enroll("obama", [wild_dir / n for n in OBAMA])
        res = g.verify("obama", wild_dir / "obama3.jpg")
        assert res.aggregation == "mean"
        assert res.similarity == pytest.approx(np.mean([t.similarity for t in res.templates]), abs=1e-9)
        assert res.similarity < res.templates[0].similarity


def test_unknown_identities_empty_identities_and_bad_options(gallery: Gallery, wild_dir: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IdentityNotFoundError):
        gallery.verify("nobody", b"not even an image")  # 404 before any image work
    with pytest.raises(InvalidArgumentError):
        gallery.verify("a/b", wild_dir / "obama3.jpg")
    for kw in ({"threshold": 1.5}, {"threshold": 0.3, "fmr": 1e-3}, {"fmr": 2.0}):
        with pytest.raises(InvalidArgumentError):
            gallery.verify("obama", wild_dir / "obama3.jpg", **kw)
    (tid,) = gallery.get("biden").template_ids
    gallery.remove_template(tid)
    with pytest.raises(NoTemplatesError) as err:
        gallery.verify("biden", wild_dir / "obama3.jpg")
    assert err.value.code == "no_templates" and err.value.http_status == 409
    q = matcher.embed(wild_dir / "obama3.jpg")[0].vector
    assert gallery.verify_embedding("obama", q).is_match
    with pytest.raises(ModelMismatchError):
        gallery.verify_embedding("obama", q, "another-model")
    with pytest.raises(InvalidArgumentError):
        gallery.verify_embedding("obama", np.stack([q, q]))
    with pytest.raises(ModelMismatchError):  # another dimension is another model (the binding's rule)
        gallery.verify_embedding("obama", q[:10])
    gallery.close()
    with pytest.raises(GalleryError):
        gallery.verify_embedding("obama", q)


def test_verify_without_calibration_needs_a_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with Gallery(tmp_path / "s.fmg") as g:
        v = unit(rng.standard_normal((2, DIM)))
        g.enroll_embeddings("a", v, MODEL)
        with pytest.raises(CalibrationMissingError):
            g.verify_embedding("a", v[0])
        res = g.verify_embedding("a", v[0], threshold=0.5)
        assert res.is_match and res.similarity == pytest.approx(1.0, abs=1e-6)
    with Gallery(tmp_path / "s.fmg", calibration=calibration(rng)) as g:  # the gallery's calibration is used
        res = g.verify_embedding("a", v[1], fmr=1e-3)
        assert res.threshold == pytest.approx(g.calibration.threshold_for(1e-3)) and res.target_fmr == 1e-3


def test_cli_gallery_verify(gallery: Gallery, wild_dir: Path) -> None:
    path = gallery.path
    gallery.close()
    runner = CliRunner()
    r = runner.invoke(gallery_app, ["verify", str(path), "obama", str(wild_dir / "obama3.jpg"), "--json"])
    assert r.exit_code == 0, r.output
    body = json.loads(r.output)
    assert body["is_match"] is True and len(body["templates"]) == 3 and body["identity_id"] == "obama"
    r = runner.invoke(gallery_app, ["verify", str(path), "biden", str(wild_dir / "obama3.jpg")])
    assert r.exit_code == 0 and r.output.startswith("NO MATCH biden")
    r = runner.invoke(gallery_app, ["verify", str(path), "nobody", str(wild_dir / "obama3.jpg")])
    assert r.exit_code == 2 and "identity_not_found" in r.output
