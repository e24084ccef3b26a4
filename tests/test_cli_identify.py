"""Identify numbers a user can reproduce: the N the FPIR threshold used, FMRs below the calibration's resolution.

A real gallery (default pack, aligned celeb24 crops) of 3 identities and 7 templates, through the
SDK, the ``facematch gallery`` commands and the server's response schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facematch.cli import app
from facematch.gallery import Gallery
from facematch.gallery.openset import threshold_for_fpir
from facematch.types import Candidate, ceil_sig

runner = CliRunner()
PER_IDENTITY = (3, 2, 2)  # 7 templates of 3 identities


@pytest.fixture(scope="module")
def crops(celeb24_dir: Path) -> dict[str, list[Path]]:
    people = sorted(p for p in celeb24_dir.iterdir() if p.is_dir())[: len(PER_IDENTITY)]
    return {p.name: sorted(p.glob("*.png"))[:6] for p in people}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, crops: dict[str, list[Path]]) -> Path:
    path = tmp_path_factory.mktemp("identify") / "g.fmg"
    for (name, files), n in zip(crops.items(), PER_IDENTITY, strict=True):
        r = runner.invoke(app, ["gallery", "enroll", str(path), name, *map(str, files[:n]), "--aligned"])
        assert r.exit_code == 0, r.output
    return path


def test_fpir_threshold_names_the_template_count_it_was_scaled_by(gallery: Path, crops: dict[str, list[Path]]) -> None:
    probe = crops[next(iter(crops))][4]  # not enrolled
    with Gallery.open(gallery, read_only=True) as g:
        res = g.identify(str(probe), fpir=0.01, aligned=True)
        cal = g.calibration
        assert cal is not None
    assert (res.gallery_size, res.comparisons) == (3, 7)
    assert res.threshold == threshold_for_fpir(cal, 0.01, 7)
    assert res.threshold != threshold_for_fpir(cal, 0.01, 3)  # the number counting identities would give
    assert res.fmr_resolution == pytest.approx(1.0 / cal.n_impostor_pairs)

    out = runner.invoke(app, ["gallery", "identify", str(gallery), str(probe), "--aligned", "--fpir", "0.01"])
    assert out.exit_code == 0, out.output
    head = out.output.splitlines()[0]
    assert f"threshold {res.threshold:.4f} for FPIR 0.01 over 7 template(s); gallery of 3 identities" in head
    data = json.loads(
        runner.invoke(
            app, ["gallery", "identify", str(gallery), str(probe), "--aligned", "--fpir", "0.01", "--json"]
        ).output
    )
    assert (data["comparisons"], data["gallery_size"], data["target_fpir"]) == (7, 3, 0.01)
    assert data["threshold"] == pytest.approx(res.threshold, abs=1e-6)
    given = runner.invoke(app, ["gallery", "identify", str(gallery), str(probe), "--aligned", "--threshold", "0.3"])
    assert "threshold 0.3000 given; gallery of 3 identities" in given.output


def test_fmr_below_the_calibrations_resolution_is_a_bound(gallery: Path, crops: dict[str, list[Path]]) -> None:
    first = next(iter(crops))
    enrolled = crops[first][0]  # the probe is an enrolled template: similarity 1, above every impostor
    with Gallery.open(gallery, read_only=True) as g:
        res = g.identify(str(enrolled), k=3, threshold=0.3, aligned=True)
        cal = g.calibration
        assert cal is not None
    top, *others = res.candidates
    assert top.identity_id == first and top.similarity > max(cal.curve_similarity)
    assert top.estimated_fmr_below_resolution and top.estimated_fmr == cal.min_fmr
    assert float(cal.fmr_at(top.similarity)) < cal.min_fmr  # the extrapolated value it replaces
    assert top.fmr_text() == f"< {ceil_sig(cal.min_fmr):.1e}".replace("e-0", "e-")
    for c in others:  # impostor-like scores lie inside the measured curve: an estimate, not a bound
        assert not c.estimated_fmr_below_resolution
        assert c.estimated_fmr == pytest.approx(float(cal.fmr_at(c.similarity)))
    text = runner.invoke(app, ["gallery", "identify", str(gallery), str(enrolled), "--aligned", "--threshold", "0.3"])
    assert f"{first}: similarity 1.0000  est. FMR < " in text.output
    data = json.loads(
        runner.invoke(
            app, ["gallery", "identify", str(gallery), str(enrolled), "--aligned", "--threshold", "0.3", "--json"]
        ).output
    )
    best = data["candidates"][0]
    assert best["estimated_fmr_below_resolution"] is True and best["estimated_fmr"] == pytest.approx(cal.min_fmr)

    from facematch.server.schemas.match import FaceIdentification  # the server answers the same fields

    served = FaceIdentification.of(res).model_dump()
    assert served["comparisons"] == res.comparisons and served["fmr_resolution"] == res.fmr_resolution
    assert served["candidates"][0]["estimated_fmr_below_resolution"] is True


def test_fmr_text_rounds_the_bound_up() -> None:
    assert ceil_sig(2.35e-6) == 2.4e-6 and ceil_sig(2.4e-6) == 2.4e-6 and ceil_sig(9.99e-4) == 1e-3
    assert Candidate("a", 0.9, 2.35e-6, estimated_fmr_below_resolution=True).fmr_text() == "< 2.4e-6"
    assert Candidate("a", 0.1, 3.14e-4).fmr_text() == "3.1e-4"
    assert Candidate("a", 0.1, None).fmr_text() == "n/a"


def test_info_says_whether_the_gallery_is_writable(gallery: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``info`` opens the gallery read-only (it works beside a running writer) but reports the gallery's state."""
    data = json.loads(runner.invoke(app, ["gallery", "info", str(gallery), "--json"]).output)
    assert data["read_only"] is False and data["templates"] == 7 and data["identities"] == 3
    import facematch.gallery.cli as gcli

    real_access = gcli.os.access
    monkeypatch.setattr(gcli.os, "access", lambda p, mode: False if mode == gcli.os.W_OK else real_access(p, mode))
    data = json.loads(runner.invoke(app, ["gallery", "info", str(gallery), "--json"]).output)
    assert data["read_only"] is True  # files this user cannot write (root ignores chmod, hence the patch)


def test_duplicate_identity_names_the_cli_action(gallery: Path, crops: dict[str, list[Path]]) -> None:
    first = next(iter(crops))
    r = runner.invoke(app, ["gallery", "enroll", str(gallery), first, str(crops[first][5]), "--aligned", "--json"])
    assert r.exit_code == 2
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "duplicate_identity"
    assert err["message"] == (
        f"identity {first!r} already exists; add templates to it with "
        "'facematch gallery enroll GALLERY ID IMAGE... --add'"
    )
    added = runner.invoke(app, ["gallery", "enroll", str(gallery), first, str(crops[first][5]), "--aligned", "--add"])
    assert added.exit_code == 0, added.output
    deleted = runner.invoke(app, ["gallery", "delete", str(gallery), first, "--json"])  # and back to 7 templates
    assert deleted.exit_code == 0 and json.loads(deleted.output)["identity_id"] == first
    again = runner.invoke(app, ["gallery", "enroll", str(gallery), first, *map(str, crops[first][:3]), "--aligned"])
    assert again.exit_code == 0, again.output


def test_a_locked_gallery_is_a_runtime_failure_with_cli_advice(gallery: Path, crops: dict[str, list[Path]]) -> None:
    name = list(crops)[1]
    with Gallery.open(gallery):  # this handle holds the writer lock, as a running server would
        r = runner.invoke(app, ["gallery", "enroll", str(gallery), name, str(crops[name][5]), "--aligned", "--add"])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error [gallery_locked]: gallery ") and "'facematch serve'" in r.output
    assert "read_only=True" not in r.output
