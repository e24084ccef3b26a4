"""Face quality on real parts: the default pack, real photos and crops, the real card's quality block."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facematch import FaceMatcher
from facematch.quality import (
    ENROLMENT_POLICY,
    LANDMARKS_106_FOR_MODEL_6,
    PROBE_POLICY,
    FaceQuality,
    assess,
    assess_image,
    landmark_model,
    measure_mirror,
)
from facematch.types import Detections, PreparedImage


def _aligned(crops: np.ndarray) -> PreparedImage:
    return PreparedImage(Detections.empty(), crops, len(crops), (112, 112), aligned=True)


def test_the_default_card_holds_a_fitted_quality_model() -> None:
    from facematch.model_files import load_card

    block = load_card("w600k_mbf").quality
    assert block is not None and block.set == "celeb24" and "log_feature_norm" in block.features
    assert block.held_out is not None and block.held_out.fnmr[0] > block.held_out.fnmr[2]  # rejecting helps
    assert block.threshold == pytest.approx(load_card("w600k_mbf").threshold_for(1e-3), abs=1e-6)
    assert "quality-fit" in block.command and "by identity" in block.fold_scheme


def test_embed_and_verify_carry_each_face_quality(matcher: FaceMatcher, wild_dir: Path) -> None:
    (e,) = matcher.embed(wild_dir / "obama.jpg")
    q = e.quality
    assert isinstance(q, FaceQuality) and q.unified_status == "scored" and q.model_id == matcher.model_id
    assert q.unified is not None and q.unified > 50
    assert q.feature_norm == pytest.approx(e.norm)
    assert q.pose_method == "5-point" and abs(q.yaw_deg) < 15 and abs(q.pitch_deg) < 20  # type: ignore[arg-type]
    assert q.inter_ocular_px > 60 and q.visible_fraction == 1.0  # type: ignore[operator]
    assert e.to_dict()["quality"]["unified"] == round(q.unified, 2)
    r = matcher.verify(wild_dir / "obama.jpg", wild_dir / "obama2.jpg")
    assert r.quality1 is not None and r.quality2 is not None and r.quality1.unified == pytest.approx(q.unified)
    assert r.to_dict()["quality2"]["unified_status"] == "scored"
    off = FaceMatcher(quality=False, workers=1)
    assert off.embed(wild_dir / "obama.jpg")[0].quality is None
    assert off.verify(wild_dir / "obama.jpg", wild_dir / "obama2.jpg").quality1 is None


def test_degraded_copies_score_below_their_originals(matcher: FaceMatcher, celeb24_dir: Path) -> None:
    """Two crops of each identity; the full 942-image measurement is benchmarks/bench_quality.py."""
    paths = [p for d in sorted(celeb24_dir.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png"))[:2]]
    crops = np.stack([cv2.imread(str(p)) for p in paths])
    card = matcher.embedder_card

    def scores(batch: np.ndarray) -> np.ndarray:
        _, norms = matcher.embed_crops(batch)
        return np.array([q.unified for q in assess(_aligned(batch), norms, card)])

    base = scores(crops)
    degraded = {
        "blur": np.stack([cv2.GaussianBlur(c, (0, 0), 2.0) for c in crops]),
        "down-up 28": np.stack(
            [cv2.resize(cv2.resize(c, (28, 28), interpolation=cv2.INTER_AREA), (112, 112)) for c in crops]
        ),
        "x0.25": (crops.astype(np.float32) * 0.25).round().astype(np.uint8),
        "jpeg 10": np.stack(
            [cv2.imdecode(cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, 10])[1], cv2.IMREAD_COLOR) for c in crops]
        ),
    }
    for name, batch in degraded.items():
        share = float(np.mean(scores(batch) < base))
        assert share >= 0.9, f"{name}: only {share:.0%} of degraded copies scored below their originals"


def test_grey_16_bit_and_rgba_go_the_same_path(matcher: FaceMatcher, wild_dir: Path, tmp_path: Path) -> None:
    src = Image.open(wild_dir / "obama.jpg")
    variants = {}
    for name, img in (("grey.png", src.convert("L")), ("rgba.png", src.convert("RGBA"))):
        img.save(tmp_path / name)
        variants[name] = tmp_path / name
    grey16 = (np.asarray(src.convert("L"), np.uint16) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")
    (tmp_path / "grey16.png").write_bytes(buf.getvalue())
    variants["grey16.png"] = tmp_path / "grey16.png"
    _, (colour,) = assess_image(matcher, wild_dir / "obama.jpg", faces="largest")
    for name, path in variants.items():
        _, (q,) = assess_image(matcher, path, faces="largest")
        assert q.unified_status == "scored", name
        assert q.inter_ocular_px == pytest.approx(colour.inter_ocular_px, rel=0.05), name
        assert abs(q.brightness - colour.brightness) < 12, name  # the same luminance, whatever the format
    _, (rgba_file,) = assess_image(matcher, wild_dir / "rgba_32bit.png", faces="largest")
    assert rgba_file.unified is not None


def test_faces_cut_by_the_border_are_seen_and_refused_for_enrolment(matcher: FaceMatcher, wild_dir: Path) -> None:
    _, (cut,) = assess_image(matcher, wild_dir / "obama_partial_face.jpg", faces="largest")
    _, (whole,) = assess_image(matcher, wild_dir / "obama.jpg", faces="largest")
    assert cut.visible_fraction is not None and cut.visible_fraction < 0.9 and whole.visible_fraction == 1.0
    assert any(f.component == "visible_fraction" for f in ENROLMENT_POLICY.check(cut).failures)
    assert ENROLMENT_POLICY.check(whole).passed
    assert PROBE_POLICY.check(cut).passed  # a probe may be cut a little


def test_tiny_faces_and_one_pixel_boxes_do_not_crash(matcher: FaceMatcher, wild_dir: Path) -> None:
    img = cv2.imread(str(wild_dir / "obama.jpg"))
    small = cv2.resize(img, None, fx=0.08, fy=0.08, interpolation=cv2.INTER_AREA)  # a face of ~8 px between the eyes
    canvas = np.full((240, 240, 3), 90, np.uint8)
    canvas[10 : 10 + small.shape[0], 10 : 10 + small.shape[1]] = small
    try:
        _, quals = assess_image(matcher, canvas, faces="largest")
    except Exception as exc:  # the detector may miss a face this small: then it says so, typed
        from facematch.errors import NoFaceError

        assert isinstance(exc, NoFaceError)
    else:
        assert quals[0].inter_ocular_px < 20  # type: ignore[operator]
        assert not ENROLMENT_POLICY.check(quals[0]).passed
    # a 1-pixel box (its landmarks inside it), given by the caller, through align + embed + assess
    from facematch.align import ARCFACE_TEMPLATE
    from facematch.types import Face

    lms = (50.0 + ARCFACE_TEMPLATE / 112.0).astype(np.float32)
    face = Face(box=np.array([50, 50, 51, 51], np.float32), score=0.9, landmarks=lms)
    crops = matcher.align(img, [face])
    prep = PreparedImage(Detections.from_faces([face]), crops, 1, (img.shape[1], img.shape[0]))
    _, norms = matcher.embed_crops(crops)
    (q,) = matcher.assess(prep, norms)
    assert q.face_size_px == 1.0 and q.inter_ocular_px < 1 and q.yaw_deg is None  # type: ignore[operator]
    assert not ENROLMENT_POLICY.check(q).passed and not PROBE_POLICY.check(q).passed


def test_106_point_pose_and_its_landmark_indices(matcher: FaceMatcher, wild_dir: Path) -> None:
    prep, (q106,) = assess_image(matcher, wild_dir / "obama.jpg", faces="largest", pose106=True)
    _, (q5,) = assess_image(matcher, wild_dir / "obama.jpg", faces="largest")
    assert q106.pose_method == "106-point" and q5.pose_method == "5-point"
    assert abs(q106.yaw_deg - q5.yaw_deg) < 10 and abs(q106.roll_deg - q5.roll_deg) < 6  # type: ignore[operator]
    # the six points fitted to the generic head lie where the detector's 5 landmarks say
    face = prep.face(0)
    assert face is not None
    pts = landmark_model().predict(matcher.load(wild_dir / "obama.jpg").pixels, [face])[0]
    nose, chin, eye_l, eye_r, mouth_l, mouth_r = (pts[i] for i in LANDMARKS_106_FOR_MODEL_6)
    lm, iod = face.landmarks, q5.inter_ocular_px
    assert iod is not None
    assert np.hypot(*(nose - lm[2])) < 0.25 * iod
    assert np.hypot(*(mouth_l - lm[3])) < 0.25 * iod and np.hypot(*(mouth_r - lm[4])) < 0.25 * iod
    assert eye_l[0] < lm[0][0] < lm[1][0] < eye_r[0]  # outer corners outside the eye centres
    assert chin[1] > max(lm[3][1], lm[4][1]) + 0.3 * iod
    # profile-ish faces (celeb24's largest yaws) read as turned by both methods
    _, turned = assess_image(matcher, wild_dir / "biden.jpg", faces="largest", pose106=True)
    assert turned[0].yaw_deg is not None


def test_mirror_consistency_costs_one_embedding_and_is_high_for_a_face(matcher: FaceMatcher, wild_dir: Path) -> None:
    prep = matcher.prepare(wild_dir / "obama.jpg")
    emb, _ = matcher.embed_crops(prep.crops)
    (cos,) = measure_mirror(matcher, prep.crops, emb)
    assert 0.8 < cos <= 1.0
    noise = np.random.default_rng(0).integers(0, 255, (1, 112, 112, 3), dtype=np.uint8)
    e2, _ = matcher.embed_crops(noise)
    assert measure_mirror(matcher, noise, e2)[0] < cos
