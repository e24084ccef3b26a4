"""Face quality components, FaceQuality, the unified score and QualityPolicy as pure functions (no models)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from facematch.align import ARCFACE_TEMPLATE
from facematch.cards import QualityBlock
from facematch.errors import FacematchError, InvalidArgumentError, ModelError
from facematch.quality import (
    COMPONENT_NAMES,
    COMPONENTS,
    ENROLMENT_POLICY,
    FACE_MODEL_5,
    FACE_MODEL_6,
    FEATURES,
    FRONTAL_5,
    LANDMARKS_106_FOR_MODEL_6,
    NO_POLICY,
    POLICY_FIELDS,
    PROBE_POLICY,
    FaceQuality,
    LowQualityError,
    QualityPolicy,
    affine_pose,
    assess,
    euler_angles,
    exposure,
    face_size,
    feature_vector,
    goodness,
    inter_ocular_distance,
    logistic_score,
    mirror_consistency,
    policy_named,
    pose_from_5,
    pose_from_106,
    sharpness,
    solve_pose,
    unified_score,
    visible_fraction,
)
from facematch.types import Detections, Face, PreparedImage


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The face rotation euler_angles documents: R = Rx(-pitch) · Ry(-yaw) · Rz(roll)."""
    a, b, c = math.radians(-pitch), math.radians(-yaw), math.radians(roll)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def project(model: np.ndarray, yaw: float, pitch: float, roll: float, scale: float, distance: float | None = None):  # type: ignore[no-untyped-def]
    """2-D points of ``model`` rotated and seen by a camera (orthographic, or pinhole at ``distance``)."""
    p = model @ rotation(yaw, pitch, roll).T
    if distance is not None:
        p = p[:, :2] * distance / (p[:, 2:] + distance)
    return p[:, :2] * scale + np.array([640.0, 360.0])


POSES = [(0, 0, 0), (25, 0, 0), (-25, 0, 0), (0, 20, 0), (0, -20, 0), (0, 0, 15), (35, -15, 10), (-50, 25, -20)]


# ---- geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("angles", POSES)
def test_5_point_pose_recovers_known_rotations(angles: tuple[float, float, float]) -> None:
    """Oracle: the 5-point generic face rotated by known angles and projected gives those angles back."""
    got = affine_pose(project(FACE_MODEL_5, *angles, scale=4.0), FACE_MODEL_5)
    assert got is not None
    np.testing.assert_allclose(got, angles, atol=1e-6)
    pose = pose_from_5(project(FACE_MODEL_5, *angles, scale=4.0))
    assert pose is not None and pose.method == "5-point"
    np.testing.assert_allclose([pose.yaw, pose.pitch, pose.roll], angles, atol=1e-6)


@pytest.mark.parametrize("angles", POSES)
def test_106_point_pose_recovers_known_rotations_through_pnp(angles: tuple[float, float, float]) -> None:
    """Oracle: the 6-point generic head placed at the 106-point indices; PnP gives the angles back."""
    pts = np.zeros((106, 2))
    pts[list(LANDMARKS_106_FOR_MODEL_6)] = project(FACE_MODEL_6, *angles, scale=0.4)
    pose = pose_from_106(pts)
    assert pose is not None and pose.method == "106-point"
    np.testing.assert_allclose([pose.yaw, pose.pitch, pose.roll], angles, atol=0.5)
    # a real (pinhole) camera 10 face sizes away: perspective costs a few degrees at most
    near = solve_pose(project(FACE_MODEL_6, *angles, scale=0.4, distance=6000.0), FACE_MODEL_6)
    assert near is not None
    np.testing.assert_allclose(near, angles, atol=4.0)


def test_pose_signs_follow_the_documented_convention() -> None:
    """+yaw: the nose right of the eyes' midpoint; +pitch: the nose up; +roll: the eye line clockwise."""
    right = project(FACE_MODEL_5, 20, 0, 0, 4.0)
    assert right[2, 0] > (right[0, 0] + right[1, 0]) / 2
    up = project(FACE_MODEL_5, 0, 20, 0, 4.0)
    frontal = project(FACE_MODEL_5, 0, 0, 0, 4.0)
    assert up[2, 1] - up[0, 1] < frontal[2, 1] - frontal[0, 1]  # y points down: the nose rises towards the eyes
    tilted = project(FACE_MODEL_5, 0, 0, 15, 4.0)
    assert tilted[1, 1] > tilted[0, 1]  # clockwise: the right eye (image right) goes down
    np.testing.assert_allclose(euler_angles(np.eye(3)), (0, 0, 0), atol=1e-12)


def test_frontal_layout_is_zero_pose_and_degenerate_points_give_none() -> None:
    pose = pose_from_5(FRONTAL_5 * 3 + 100)
    assert pose is not None and max(abs(pose.yaw), abs(pose.pitch), abs(pose.roll)) < 1e-6
    assert pose_from_5(np.full((5, 2), 50.0)) is None  # a 1-pixel face: every landmark at one point
    assert pose_from_5(np.array([[0, 0], [1, 0], [0.5, 0.5], [0.2, 1], [0.8, 1]], float)) is None  # < 2 px spread
    assert pose_from_5(np.full((5, 2), np.nan)) is None
    assert solve_pose(np.zeros((3, 2)), FACE_MODEL_6[:3]) is None
    with pytest.raises(InvalidArgumentError):
        pose_from_106(np.zeros((68, 2)))


def test_inter_ocular_distance_face_size_and_visibility() -> None:
    lms = ARCFACE_TEMPLATE * 2.0 + np.array([300.0, 200.0], np.float32)
    assert inter_ocular_distance(lms) == pytest.approx(
        2.0 * float(np.hypot(*(ARCFACE_TEMPLATE[1] - ARCFACE_TEMPLATE[0])))
    )
    assert face_size(np.array([10, 20, 110, 60])) == 40
    assert face_size(np.array([10, 20, 10, 20])) == 0  # a zero-size box
    assert face_size(np.array([50, 50, 10, 10])) == 0  # an inverted one
    assert visible_fraction(lms, (1000, 1000)) == 1.0
    # the template at scale 2 maps the crop's face region (x 20-92) to x 40+ox .. 184+ox: with ox = -112
    # it spans -72 .. 72, half of it left of the image
    half = ARCFACE_TEMPLATE * 2.0 + np.array([-112.0, 200.0], np.float32)
    assert visible_fraction(half, (1000, 1000)) == pytest.approx(0.5, abs=1 / 16)
    off = visible_fraction(lms + 5000, (1000, 1000))
    assert off == 0.0
    assert visible_fraction(np.full((5, 2), 3.0), (10, 10)) is None  # degenerate: no alignment


# ---- the crop ------------------------------------------------------------------------------


def _texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(40, 215, (28, 28, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC)
    return np.clip(base.astype(np.int16) + rng.integers(-25, 26, base.shape), 0, 255).astype(np.uint8)


def test_sharpness_falls_with_blur_and_is_zero_on_a_flat_crop() -> None:
    crop = _texture()
    blurred = [sharpness(cv2.GaussianBlur(crop, (0, 0), s)) for s in (0.8, 1.5, 3.0)]
    assert sharpness(crop) > blurred[0] > blurred[1] > blurred[2] > 0
    assert sharpness(np.full((112, 112, 3), 128, np.uint8)) == 0.0
    with pytest.raises(InvalidArgumentError):
        sharpness(np.zeros((112, 112), np.uint8))


def test_exposure_statistics_and_clipping() -> None:
    crop = _texture()
    ex = exposure(crop)
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)[24:104, 20:92]
    assert ex.brightness == pytest.approx(float(grey.mean()), abs=1e-3)
    assert ex.contrast == pytest.approx(float(grey.std()), abs=1e-3)
    dark = exposure((crop * 0.25).astype(np.uint8))
    assert dark.brightness < ex.brightness / 3 and dark.contrast < ex.contrast / 3
    black, white = exposure(np.zeros((112, 112, 3), np.uint8)), exposure(np.full((112, 112, 3), 255, np.uint8))
    assert (black.dark_fraction, black.bright_fraction) == (1.0, 0.0)
    assert (white.dark_fraction, white.bright_fraction) == (0.0, 1.0)


def test_mirror_consistency_is_the_cosine() -> None:
    a = np.array([[1.0, 0.0], [0.6, 0.8]])
    b = np.array([[0.0, 1.0], [0.6, 0.8]])
    np.testing.assert_allclose(mirror_consistency(a, b), [0.0, 1.0])
    with pytest.raises(InvalidArgumentError):
        mirror_consistency(a, b[:1])


# ---- FaceQuality and assess ------------------------------------------------------------------


def _block(**update: object) -> QualityBlock:
    fields: dict[str, object] = {
        "features": ("log_feature_norm", "log_sharpness"),
        "mean": (3.0, 3.0),
        "std": (0.1, 0.5),
        "weights": (0.7, 0.2),
        "bias": 2.0,
        "label": "test",
        "fmr": 1e-3,
        "threshold": 0.26,
        "set": "synthetic",
        "command": "test",
        "fold_scheme": "none",
        "n_images": 10,
        "n_identities": 2,
    }
    fields.update(update)
    return QualityBlock(**fields)  # type: ignore[arg-type]


def test_unified_score_is_the_stored_logistic_model() -> None:
    block = _block()
    values = {"feature_norm": math.e**3 - 1, "sharpness": math.e**3.5 - 1}
    score, status, missing = unified_score(block, values)
    z = 2.0 + 0.7 * 0.0 + 0.2 * (0.5 / 0.5)
    assert status == "scored" and missing == () and score == pytest.approx(100.0 / (1.0 + math.exp(-z)))
    assert unified_score(None, values) == (None, "no_quality_model", ())
    assert unified_score(block, {"sharpness": 10.0}) == (None, "missing_components", ("feature_norm",))
    # extreme inputs stay in [0, 100] without overflow
    assert logistic_score(block, np.array([1e6, 0.0])) == pytest.approx(100.0)
    assert logistic_score(block, np.array([-1e6, 0.0])) == pytest.approx(0.0)


def test_feature_table_covers_every_feature_and_reports_missing_components() -> None:
    full = {name: 0.5 for name in COMPONENT_NAMES}
    x, missing = feature_vector(tuple(FEATURES), full)
    assert x is not None and x.shape == (len(FEATURES),) and missing == ()
    x, missing = feature_vector(("clipped_fraction", "abs_yaw"), {"dark_fraction": 0.1, "bright_fraction": None})
    assert x is None and set(missing) == {"bright_fraction", "yaw_deg"}


def test_quality_block_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown quality features"):
        _block(features=("log_feature_norm", "shoe_size"))
    with pytest.raises(ValueError, match="one value per feature"):
        _block(weights=(1.0,))
    with pytest.raises(ValueError, match="positive"):
        _block(std=(0.1, 0.0))
    with pytest.raises(ValueError, match="finite"):
        _block(bias=float("nan"))
    with pytest.raises(ValueError, match="distinct"):
        _block(features=("log_sharpness", "log_sharpness"))


def test_face_quality_refuses_non_finite_components_and_inconsistent_scores() -> None:
    base = {"sharpness": 10.0, "brightness": 120.0, "contrast": 40.0, "dark_fraction": 0.0, "bright_fraction": 0.0}
    with pytest.raises(ValueError, match="not finite"):
        FaceQuality(**{**base, "sharpness": float("nan")})
    with pytest.raises(ValueError, match="not finite"):
        FaceQuality(**base, feature_norm=float("inf"))
    with pytest.raises(ValueError, match="fraction"):
        FaceQuality(**{**base, "dark_fraction": 1.5})
    with pytest.raises(ValueError, match="disagrees"):
        FaceQuality(**base, unified=50.0)  # a score without "scored"
    with pytest.raises(ValueError, match="disagrees"):
        FaceQuality(**base, unified_status="scored")  # "scored" without a score
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        FaceQuality(**base, unified=101.0, unified_status="scored")
    q = FaceQuality(**base, unified=42.0, unified_status="scored")
    d = q.to_dict()
    assert d["unified"] == 42.0 and set(COMPONENT_NAMES) <= set(d) and d["yaw_deg"] is None
    assert list(q.components) == list(COMPONENTS)


def _card(block: QualityBlock | None = None) -> Any:
    """What assess reads of an embedder card: its id and quality block."""
    return SimpleNamespace(id="synthetic", quality=block if block is not None else _block())


def _prepared(box: list[float], landmarks: np.ndarray, image_size: tuple[int, int]) -> PreparedImage:
    face = Face(box=np.array(box, np.float32), score=0.8, landmarks=landmarks.astype(np.float32))
    return PreparedImage(Detections.from_faces([face]), _texture()[None], 1, image_size)


def test_assess_a_detected_face_cut_by_the_border_and_a_one_pixel_face() -> None:
    lms = ARCFACE_TEMPLATE - np.array([40.0, 0.0], np.float32)  # half the face left of x = 0
    (q,) = assess(_prepared([0, 0, 80, 112], lms, (200, 200)), [20.0], None)
    assert q.visible_fraction is not None and q.visible_fraction < 0.9
    assert q.inter_ocular_px == pytest.approx(35.24, abs=0.01) and q.face_size_px == 80
    assert q.unified_status == "no_quality_model" and q.unified is None and q.feature_norm == 20.0
    # a 1-pixel box with every landmark at one point: no crash, no division by zero, no pose
    (tiny,) = assess(_prepared([5, 5, 6, 6], np.full((5, 2), 5.5), (10, 10)), [1.0], _card())
    assert tiny.face_size_px == 1.0 and tiny.inter_ocular_px == 0.0
    assert tiny.yaw_deg is None and tiny.pose_method is None and tiny.visible_fraction is None
    assert tiny.unified is not None and all(math.isfinite(v) for v in tiny.components.values() if v is not None)


def test_assess_an_aligned_crop_has_no_geometry_and_checks_its_inputs() -> None:
    prep = PreparedImage(Detections.empty(), _texture()[None], 1, (112, 112), aligned=True)
    (q,) = assess(prep, [22.0], _card())
    assert q.inter_ocular_px is None and q.face_size_px is None and q.yaw_deg is None
    assert q.unified_status == "scored" and 0 <= q.unified <= 100  # type: ignore[operator]
    (no_norm,) = assess(prep, None, _card())
    assert no_norm.unified_status == "missing_components" and no_norm.missing == ("feature_norm",)
    for bad in ([float("nan")], [0.0], [-1.0], [1.0, 2.0]):
        with pytest.raises(InvalidArgumentError):
            assess(prep, bad, _card())
    with pytest.raises(InvalidArgumentError):
        assess(prep, [1.0], None, mirror=[float("inf")])


def test_a_component_that_comes_out_non_finite_is_an_error_not_a_score(monkeypatch: pytest.MonkeyPatch) -> None:
    import facematch.quality.score as score

    monkeypatch.setattr(score, "sharpness", lambda crop: float("nan"))
    prep = PreparedImage(Detections.empty(), _texture()[None], 1, (112, 112), aligned=True)
    with pytest.raises(ModelError, match="not finite"):
        assess(prep, [20.0], _card())


# ---- the ERC goodness and policies ---------------------------------------------------------------


def test_goodness_orients_every_component() -> None:
    assert goodness("feature_norm", 3.0) > goodness("feature_norm", 2.0)
    assert goodness("dark_fraction", 0.0) > goodness("dark_fraction", 0.5)
    assert goodness("yaw_deg", -5.0) > goodness("yaw_deg", 30.0) and goodness("yaw_deg", 5.0) == goodness(
        "yaw_deg", -5.0
    )
    assert goodness("brightness", 128.0) > goodness("brightness", 20.0)
    assert goodness("brightness", 128.0) > goodness("brightness", 240.0)


def _quality(**values: object) -> FaceQuality:
    base: dict[str, object] = {
        "sharpness": 20.0,
        "brightness": 120.0,
        "contrast": 40.0,
        "dark_fraction": 0.0,
        "bright_fraction": 0.0,
    }
    base.update(values)
    return FaceQuality(**base)  # type: ignore[arg-type]


def test_policy_names_every_failing_component_with_value_and_limit() -> None:
    policy = QualityPolicy(min_quality=50, min_face_size=40, max_abs_yaw=30, min_sharpness=10, name="t")
    q = _quality(face_size_px=30.0, yaw_deg=-45.0, sharpness=5.0, unified=80.0, unified_status="scored")
    check = policy.check(q)
    assert not check.passed and check.unchecked == ()
    got = {(f.component, f.value, f.limit, f.kind) for f in check.failures}
    assert got == {
        ("face_size_px", 30.0, 40.0, "min"),
        ("yaw_deg", -45.0, 30.0, "max_abs"),
        ("sharpness", 5.0, 10.0, "min"),
    }
    with pytest.raises(LowQualityError) as err:
        policy.require(q, "probe.jpg")
    exc = err.value
    assert isinstance(exc, FacematchError) and exc.code == "low_quality" and exc.http_status == 422
    assert exc.details["image"] == "probe.jpg" and len(exc.details["reasons"]) == 3  # type: ignore[arg-type]
    assert {r["component"] for r in exc.details["reasons"]} == {"face_size_px", "yaw_deg", "sharpness"}  # type: ignore[union-attr]
    # limits on what an aligned crop cannot have are listed, not applied
    aligned = _quality(unified=10.0, unified_status="scored")
    check = policy.check(aligned)
    assert [f.component for f in check.failures] == ["unified"]
    assert set(check.unchecked) == {"face_size_px", "yaw_deg"}
    assert policy.check(_quality(face_size_px=40.0, yaw_deg=30.0, unified=50.0, unified_status="scored")).passed


def test_policy_limits_are_validated_and_overridable() -> None:
    for bad in (
        {"min_quality": 101},
        {"min_quality": -1},
        {"max_abs_yaw": 200},
        {"min_detection_score": 1.5},
        {"min_face_size": float("nan")},
        {"min_sharpness": True},
        {"min_face_size": "40"},
    ):
        with pytest.raises(InvalidArgumentError):
            QualityPolicy(**bad)  # type: ignore[arg-type]
    strict = ENROLMENT_POLICY.with_overrides(min_face_size=10.0, min_quality=None)
    assert strict.min_face_size == 10.0 and strict.min_quality == ENROLMENT_POLICY.min_quality
    with pytest.raises(InvalidArgumentError):
        ENROLMENT_POLICY.with_overrides(min_shoe_size=1.0)
    assert policy_named("none").limits == {} and NO_POLICY.check(_quality()).passed
    assert policy_named("probe", max_abs_yaw=10.0).max_abs_yaw == 10.0
    with pytest.raises(InvalidArgumentError):
        policy_named("paranoid")
    assert set(ENROLMENT_POLICY.to_dict()) == {"name", *POLICY_FIELDS}


def test_the_enrolment_default_is_stricter_than_the_probe_default_on_every_limit() -> None:
    for key in POLICY_FIELDS:
        strict, lenient = getattr(ENROLMENT_POLICY, key), getattr(PROBE_POLICY, key)
        if lenient is None:
            continue
        assert strict is not None, key
        assert (strict >= lenient) if key.startswith("min_") else (strict <= lenient), key
    assert ENROLMENT_POLICY.limits and ENROLMENT_POLICY.min_quality is not None
