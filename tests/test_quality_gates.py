"""Quality gates on real parts: gallery enrolment (SDK), identification results, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facematch import FaceMatcher
from facematch.errors import InvalidArgumentError, NoFaceError
from facematch.gallery import Gallery
from facematch.gallery.enrol import assess_enrolment, prepare_for_enrolment
from facematch.quality import ENROLMENT_POLICY, LowQualityError, QualityPolicy
from facematch.types import PreparedImage


@pytest.fixture(scope="module")
def blurred(wild_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """obama.jpg heavily blurred: a face the detector still finds, far too soft to enrol."""
    out = tmp_path_factory.mktemp("quality") / "obama_blurred.png"
    cv2.imwrite(str(out), cv2.GaussianBlur(cv2.imread(str(wild_dir / "obama.jpg")), (0, 0), 6.0))
    return out


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facematch.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_enrolment_refuses_low_quality_images_with_their_reasons(
    tmp_path: Path, matcher: FaceMatcher, wild_dir: Path, blurred: Path
) -> None:
    with Gallery.open(tmp_path / "g.fmg", create=True, matcher=matcher) as g:
        rep = g.enroll("obama", [wild_dir / "obama.jpg", blurred, wild_dir / "obama_partial_face.jpg"])
        assert [o.status for o in rep.outcomes] == ["enrolled", "low_quality", "low_quality"]
        ok, soft, cut = rep.outcomes
        assert ok.quality is not None and ok.quality.unified is not None and ok.template_id is not None
        assert soft.template_id is None and soft.reasons and soft.quality is not None
        failing = {r.component for r in soft.reasons}
        assert failing & {"sharpness", "unified"}, failing
        for r in soft.reasons:  # each reason names the component, its value and the limit it missed
            assert r.value < r.limit if r.kind == "min" else abs(r.value) > r.limit
        assert {r.component for r in cut.reasons} >= {"visible_fraction"}
        d = rep.to_dict()["outcomes"][1]
        assert d["status"] == "low_quality" and d["reasons"][0]["limit"] is not None and d["quality"]["sharpness"]
        assert len(g.get("obama").template_ids) == 1
        # nothing passes: LowQualityError lists every reason, and what is stored is untouched
        with pytest.raises(LowQualityError) as err:
            g.add_templates("obama", [blurred])
        exc = err.value
        assert exc.code == "low_quality" and exc.http_status == 422
        assert exc.details["reasons"] and exc.details["reasons"][0]["image"] == blurred.name  # type: ignore[index]
        assert exc.details["report"]["outcomes"][0]["status"] == "low_quality"  # type: ignore[index]
        assert len(g.get("obama").template_ids) == 1
        with pytest.raises(LowQualityError):
            g.enroll("nobody", [blurred])
        assert "nobody" not in [i.identity_id for i in g.list_identities().items]
        # strict: any refused image writes nothing
        with pytest.raises(LowQualityError):
            g.add_templates("obama", [wild_dir / "obama2.jpg", blurred], strict=True)
        assert len(g.get("obama").template_ids) == 1
        # a caller's own policy, or none
        assert g.add_templates("obama", [blurred], quality=None).template_ids
        lax = QualityPolicy(min_face_size=10_000, name="huge")
        with pytest.raises(LowQualityError, match="face_size_px"):
            g.add_templates("obama", [wild_dir / "obama2.jpg"], quality=lax)
        assert len(g.get("obama").template_ids) == 2


def test_enroll_prepared_is_the_one_gate(tmp_path: Path, matcher: FaceMatcher, wild_dir: Path, blurred: Path) -> None:
    images = [wild_dir / "biden.jpg", blurred, np.full((120, 120, 3), 127, np.uint8)]
    prepared: list[PreparedImage | NoFaceError] = []
    for im in images:
        try:
            prepared.append(prepare_for_enrolment(matcher, im, aligned=False))
        except NoFaceError as exc:
            prepared.append(exc)
    crops = np.concatenate([p.crops[:1] for p in prepared if isinstance(p, PreparedImage)])
    emb, norms = matcher.embed_crops(crops)
    qualities = assess_enrolment(matcher, prepared, norms)
    assert len(qualities) == 2 and all(q.unified is not None for q in qualities)
    with Gallery.open(tmp_path / "g.fmg", create=True, matcher=matcher) as g:
        kw = {"sources": ["biden.jpg", "blurred", "#2"], "model_id": matcher.model_id, "create": True}
        with pytest.raises(InvalidArgumentError, match="qualities"):
            g.enroll_prepared("biden", prepared, emb, **kw)  # a policy with limits needs the qualities
        with pytest.raises(InvalidArgumentError):
            g.enroll_prepared("biden", prepared, emb, qualities=qualities[:1], **kw)
        rep = g.enroll_prepared("biden", prepared, emb, qualities=qualities, **kw)
        assert [o.status for o in rep.outcomes] == ["enrolled", "low_quality", "no_face"]
        # the SDK's enroll gives the same outcomes for the same images
        again = g.enroll("biden2", images, sources=["biden.jpg", "blurred", "#2"])
        assert [o.status for o in again.outcomes] == [o.status for o in rep.outcomes]
        assert [r.component for r in again.outcomes[1].reasons] == [r.component for r in rep.outcomes[1].reasons]
        ungated = g.enroll_prepared("biden3", prepared, emb, quality=None, **{**kw, "create": True})
        assert [o.status for o in ungated.outcomes] == ["enrolled", "enrolled", "no_face"]
    with pytest.raises(InvalidArgumentError):
        assess_enrolment(matcher, prepared, norms[:1])


def test_identify_results_carry_the_probe_quality(tmp_path: Path, matcher: FaceMatcher, wild_dir: Path) -> None:
    with Gallery.open(tmp_path / "g.fmg", create=True, matcher=matcher) as g:
        g.enroll("obama", [wild_dir / "obama.jpg"])
        res = g.identify(wild_dir / "obama2.jpg", threshold=0.3)
        assert res.identity_id == "obama" and res.quality is not None and res.quality.unified is not None
        assert res.to_dict()["quality"]["model_id"] == matcher.model_id


def test_cli_quality_and_detect_json(wild_dir: Path, blurred: Path) -> None:
    r = _cli("quality", str(wild_dir / "obama.jpg"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (face,) = out["faces"]
    assert face["quality"]["unified_status"] == "scored" and face["passes"] is True and face["policy"] == "enrolment"
    r = _cli("quality", str(blurred), "--json")
    face = json.loads(r.stdout)["faces"][0]
    assert face["passes"] is False and face["failures"] and face["failures"][0]["limit"] is not None
    r = _cli("quality", str(blurred), "--policy", "none")
    assert r.returncode == 0 and "unified quality" in r.stdout and "passes the none policy" in r.stdout
    assert "grey levels" in r.stdout and "px" in r.stdout  # units printed
    r = _cli("quality", str(wild_dir / "obama.jpg"), "--policy", "paranoid")
    assert r.returncode != 0 and "policy" in r.stderr
    r = _cli("detect", str(wild_dir / "group_two_people.jpg"), "--json")
    assert r.returncode == 0, r.stderr
    faces = json.loads(r.stdout)["faces"]
    assert len(faces) >= 2 and all(f["quality"]["unified"] is not None for f in faces)
    r = _cli("detect", str(wild_dir / "group_two_people.jpg"), "--json", "--no-quality")
    assert all(f["quality"] is None for f in json.loads(r.stdout)["faces"])


def test_cli_gallery_enroll_applies_and_overrides_the_gate(tmp_path: Path, wild_dir: Path, blurred: Path) -> None:
    g = tmp_path / "cli.fmg"
    r = _cli("gallery", "enroll", str(g), "obama", str(blurred), "--json")
    assert r.returncode == 2 and "low_quality" in r.stderr  # 2: the input (a low-quality face)
    r = _cli("gallery", "enroll", str(g), "obama", str(blurred), "--quality-policy", "none", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outcomes"][0]["status"] == "enrolled"
    r = _cli("gallery", "enroll", str(g), "biden", str(wild_dir / "biden.jpg"), "--min-face-size", "5000")
    assert r.returncode == 2 and "face_size_px" in r.stderr
    r = _cli("gallery", "enroll", str(g), "biden", str(wild_dir / "biden.jpg"), "--min-quality", "101")
    assert r.returncode == 2 and "min_quality" in r.stderr


def test_enrolment_policy_passes_the_ordinary_portraits(matcher: FaceMatcher, wild_dir: Path) -> None:
    """The strict default refuses bad photos, not ordinary ones: every single-person portrait of wild passes."""
    from facematch.quality import assess_image

    portraits = ["obama.jpg", "obama2.jpg", "obama_small.jpg", "biden.jpg", "kit_harington1.jpg", "rose_leslie1.jpg"]
    for name in portraits:
        _, (q,) = assess_image(matcher, wild_dir / name, faces="largest")
        check = ENROLMENT_POLICY.check(q)
        assert check.passed, f"{name}: {check.reason}"
