"""Model cards: schema, lookup, sha256 checks, and threshold logic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from facematch.calibration import Calibration, threshold_at_fmr
from facematch.cards import parse_card, sidecar_path
from facematch.errors import (
    CalibrationMissingError,
    ChecksumMismatchError,
    InvalidArgumentError,
    ModelError,
    ModelNotFoundError,
)
from facematch.model_files import load_card, resolve_model_path, verify_file


def test_threshold_at_fmr_exact() -> None:
    imp = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    t = threshold_at_fmr(imp, 0.01)
    assert np.mean(imp >= t) <= 0.01
    assert np.mean(imp >= np.nextafter(t, -np.inf) - 1e-9) > 0.01 or t <= imp.min()
    assert np.mean(imp >= threshold_at_fmr(imp, 0.1)) == pytest.approx(0.1)


def test_calibration_from_scores_known_answer() -> None:
    rng = np.random.default_rng(0)
    imp = rng.normal(0.0, 0.1, 100_000)
    gen = rng.normal(0.6, 0.1, 2_000)
    cal = Calibration.from_scores(gen, imp, set_name="synthetic", command="test")
    for f in (1e-2, 1e-3, 1e-4):
        t = cal.threshold_for(f)
        assert np.mean(imp >= t) <= f
        # Gaussian tail: threshold close to the analytic quantile
        assert abs(t - {1e-2: 0.2326, 1e-3: 0.3090, 1e-4: 0.3719}[f]) < 0.02
    assert cal.min_fmr == pytest.approx(1e-5)
    with pytest.raises(CalibrationMissingError):
        cal.threshold_for(1e-6)
    with pytest.raises(InvalidArgumentError):
        cal.threshold_for(0.0)
    # interpolated FMRs sit between the keyed ones
    t_mid = cal.threshold_for(3e-3)
    assert cal.threshold_for(1e-2) < t_mid < cal.threshold_for(1e-3)
    # fmr_at is the inverse, monotone decreasing
    sims = np.linspace(-0.5, 0.6, 50)
    est = cal.fmr_at(sims)
    assert np.all(np.diff(est) <= 1e-12)
    assert cal.fmr_at(cal.threshold_for(1e-3)) == pytest.approx(1e-3, rel=0.3)
    assert cal.fmr_at(0.99) < cal.min_fmr


def test_tail_extrapolation_is_opt_in_monotone_and_conservative() -> None:
    """Below 1/n the threshold comes from an exponential tail fit, which over-estimates a Gaussian tail."""
    rng = np.random.default_rng(1)
    sigma = 0.07  # about the spread of 512-D impostor cosines
    cal = Calibration.from_scores(np.full(10, 0.6), rng.normal(0.0, sigma, 20_000), set_name="g", command="c")
    assert cal.min_fmr == pytest.approx(5e-5)
    with pytest.raises(CalibrationMissingError, match="calibrate on a larger set or give an explicit threshold"):
        cal.threshold_for(1e-6)
    fit = cal.tail_fit()
    assert fit is not None and fit[1] < 0
    targets = (4e-5, 1e-5, 1e-6, 1e-7, 1e-8)
    ts = [cal.threshold_for(f, extrapolate=True) for f in targets]
    assert ts[0] >= cal.curve_similarity[-1] and bool(np.all(np.diff(ts) > 0))
    for f, t in zip(targets, ts, strict=True):
        true_fmr = 0.5 * math.erfc(t / (sigma * math.sqrt(2)))  # the Gaussian's survival function
        assert true_fmr <= f, (f, t, true_fmr)
    # resolvable rates never extrapolate
    assert cal.threshold_for(1e-3, extrapolate=True) == cal.threshold_for(1e-3)
    # beyond the highest impostor, fmr_at follows the tail and keeps decreasing
    far_out = cal.fmr_at(np.array([0.4, 0.5, 0.6]))
    assert np.all(far_out < cal.min_fmr) and np.all(np.diff(far_out) < 0)
    # a calibration too small to fit a tail refuses instead
    tiny = Calibration.from_scores(np.ones(3), rng.normal(0, sigma, 200), set_name="t", command="c")
    assert tiny.tail_fit() is None
    with pytest.raises(CalibrationMissingError):
        tiny.threshold_for(1e-4, extrapolate=True)


def test_rates_between_keys_use_the_curve_not_the_rounded_key() -> None:
    """far=9.6e-5 must not get the 1e-4 threshold, whose observed rate is above 9.6e-5."""
    cal = load_card("w600k_mbf").calibration
    assert cal is not None
    assert cal.threshold_for(1e-4) == cal.thresholds["1e-4"]
    assert cal.threshold_for(9.6e-5) > cal.threshold_for(1e-4)
    assert cal.threshold_for(1.4e-3) > cal.threshold_for(1.5e-3) > cal.threshold_for(2e-3)
    assert cal.fmr_at(cal.threshold_for(9.6e-5)) <= 9.6e-5 * 1.05


def test_calibration_leaves_out_unresolvable_fmrs() -> None:
    cal = Calibration.from_scores(np.ones(10), np.linspace(0, 0.5, 500), set_name="s", command="c")
    assert set(cal.thresholds) == {"1e-2"}
    assert not math.isnan(cal.threshold_for(1e-2))


def test_default_pack_cards_are_complete() -> None:
    emb = load_card("w600k_mbf")
    assert emb.embedding is not None and emb.embedding.dim == 512 and not emb.embedding.normalized_output
    assert emb.input.size == (112, 112) and emb.input.color_order == "RGB"
    assert emb.alignment_template == "arcface_112"
    assert emb.license.commercial_use is False
    assert emb.calibration is not None and emb.calibration.set == "celeb24"
    assert set(emb.calibration.thresholds) == {"1e-2", "1e-3", "1e-4"}
    t = [emb.threshold_for(f) for f in (1e-2, 1e-3, 1e-4)]
    assert t[0] < t[1] < t[2]
    det = load_card("scrfd_500m_bnkps")
    assert det.detection is not None and det.detection.strides == (8, 16, 32)
    assert det.calibration is None
    with pytest.raises(CalibrationMissingError):
        det.threshold_for(1e-3)


def test_checksum_mismatch_refuses_to_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    card = load_card("w600k_mbf")
    fake = tmp_path / "w600k_mbf.onnx"
    fake.write_bytes(b"not the real weights")
    raw = json.loads(card.to_json())
    (tmp_path / "mine.json").write_text(json.dumps(raw))
    mine = load_card(tmp_path / "mine.json")
    path = resolve_model_path(mine)
    assert path == fake  # the file beside the card wins
    with pytest.raises(ChecksumMismatchError):
        verify_file(mine, path)


def test_lookup_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelNotFoundError):
        load_card("no_such_model")
    with pytest.raises(ModelNotFoundError):
        load_card(str(tmp_path / "missing.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    with pytest.raises(ModelError):
        load_card(junk)
    with pytest.raises(ModelError):
        parse_card('{"id": "x"}')
    raw = json.loads(load_card("w600k_mbf").to_json())
    raw["source"] = {}
    raw["id"] = "orphan"
    with pytest.raises(ModelNotFoundError):
        resolve_model_path(parse_card(raw))


def test_sidecar_card_is_found_for_a_model_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "my_r50.onnx"
    model.write_bytes(b"\x08\x07")
    raw = json.loads(load_card("w600k_mbf").to_json())
    raw.update(id="my_r50", file="my_r50.onnx")
    raw.pop("calibration")
    sidecar_path(model).write_text(json.dumps(raw))
    card = load_card(model)
    assert card.id == "my_r50" and card.calibration is None
    assert resolve_model_path(card) == model
    with pytest.raises(CalibrationMissingError):
        card.threshold_for()


def test_batch_dynamic_rewrite_leaves_no_stale_batch_one_shapes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """w600k_mbf declares batch 1 on its output and intermediates; batched runs must not warn."""
    import subprocess
    import sys

    import onnx

    from facematch.runtime import make_batch_dynamic

    card = load_card("w600k_mbf")
    try:
        path = resolve_model_path(card)
    except ModelNotFoundError as exc:  # pragma: no cover - environment problem
        pytest.skip(f"default model pack not installed: {exc}")
    original = onnx.load(str(path), load_external_data=False)
    assert len(original.graph.value_info) > 0  # the problem this guards against is really there
    fixed = onnx.load_from_string(make_batch_dynamic(path.read_bytes()))
    assert len(fixed.graph.value_info) == 0
    assert all(v.type.tensor_type.shape.dim[0].dim_param == "batch" for v in fixed.graph.output)
    # ONNX Runtime at warning level: a batch of 4 through the rewritten model prints no shape warning
    code = f"""
import numpy as np, onnxruntime as ort
from facematch.runtime import make_batch_dynamic
opts = ort.SessionOptions(); opts.log_severity_level = 2
s = ort.InferenceSession(make_batch_dynamic(open({str(path)!r}, "rb").read()), opts, providers=["CPUExecutionProvider"])
out = s.run(None, {{s.get_inputs()[0].name: np.zeros((4, 3, 112, 112), np.float32)}})[0]
print(out.shape)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "(4, 512)" in r.stdout, r.stderr
    assert "Expected shape" not in r.stderr and "VerifyOutputSizes" not in r.stderr, r.stderr[-500:]
