"""Real weights: w600k_mbf.onnx ported into the PyTorch MobileFaceNet, exported back, converted, loaded by the SDK."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from facematch.export.faces import FaceSet, load_faces  # noqa: E402
from facematch.export.runners import OnnxRunner, TorchRunner, run_batched  # noqa: E402
from facematch.export.validate import ExportValidationError, compare, row_cosines  # noqa: E402

from facematch.cards import CARD_METADATA_KEY, read_onnx_card, sidecar_path  # noqa: E402
from facematch.errors import CalibrationMissingError  # noqa: E402
from facematch.model_files import load_card, resolve_model_path, verify_file  # noqa: E402
from facematch.preprocess import to_blob  # noqa: E402

pytestmark = pytest.mark.slow  # real exports of w600k_mbf: minutes on a 2-core CPU


@pytest.fixture(scope="module")
def w600k() -> Path:
    try:
        return resolve_model_path(load_card("w600k_mbf"))
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.skip(f"default model pack not installed: {exc}")


@pytest.fixture(scope="module")
def faces(celeb24_dir: Path) -> FaceSet:
    return load_faces(celeb24_dir)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export_real")


@pytest.fixture(scope="module")
def ported(w600k: Path, work: Path) -> Path:
    from facematch.export.backbones import build_backbone
    from facematch.export.port import port_onnx_weights

    sd = port_onnx_weights(w600k, build_backbone("mbf_fc"))
    path = work / "w600k_mbf_port.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 20}, path)  # a DDP-style wrapper
    return path


@pytest.fixture(scope="module")
def exported(ported: Path, work: Path, faces: FaceSet) -> Path:
    from facematch.export.onnx_export import export_onnx

    res = export_onnx("mbf_fc", ported, work / "my_mbf.onnx", normalize=True, with_norm=True, faces=faces)
    assert res.report.passed, res.report.summary()
    return res.path


def test_ported_checkpoint_matches_original_onnx(w600k: Path, ported: Path, faces: FaceSet) -> None:
    from facematch.export.checkpoint import load_backbone

    model, info = load_backbone("mbf_fc", ported)
    assert info.container == "state_dict" and info.stripped_prefix == "module."
    card = load_card("w600k_mbf")
    x = to_blob(faces.crops[::3], card.input)  # every third face keeps the PyTorch pass short
    ref, _ = run_batched(OnnxRunner(w600k, card), x, 64)
    got, _ = run_batched(TorchRunner(model, card.input), x, 64)
    cos = row_cosines(ref, got)
    assert len(cos) > 300
    assert cos.min() >= 0.9999, cos.min()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-3)


def test_export_reproduces_original_embeddings_and_tar(w600k: Path, exported: Path, faces: FaceSet) -> None:
    card = load_card(exported)
    rep = compare(OnnxRunner(w600k, load_card("w600k_mbf")), OnnxRunner(exported, card), faces=faces)
    assert rep.passed, rep.summary()
    assert rep.faces_min_cos is not None and rep.faces_min_cos >= 0.9999
    assert rep.tar is not None and rep.tar.n_genuine > 10_000 and rep.tar.delta is not None
    assert abs(rep.tar.delta) <= 1e-3
    # the w600k_mbf card's calibration on celeb24 says TAR@FAR1e-3 = 0.924
    assert rep.tar.tar_candidate == pytest.approx(0.924, abs=0.005)


def test_exported_card(exported: Path, ported: Path) -> None:
    card = load_card(exported)
    assert card.task == "embedding" and card.arch == "mbf_fc" and card.precision == "fp32" and card.opset == 17
    assert card.alignment_template == "arcface_112" and card.input.size == (112, 112)
    assert card.input.color_order == "RGB" and card.input.mean == (127.5, 127.5, 127.5)
    assert card.embedding is not None
    assert (card.embedding.dim, card.embedding.normalized_output, card.embedding.norm_output_index) == (512, True, 1)
    assert card.source.checkpoint_sha256 == hashlib.sha256(ported.read_bytes()).hexdigest()
    assert card.calibration is None  # never copied from w600k_mbf
    export = card.export or {}
    assert export["options"]["with_norm"] is True and export["tool"].startswith("facematch.export")
    val = export["validation"]
    assert val["passed"] is True and val["n_images"] > 900 and val["tar"]["fmr"] == 0.001
    assert {(c["name"], c["batch"]) for c in val["checks"]} >= {
        ("faces", 1),
        ("faces", 7),
        ("random", 1),
        ("random", 7),
    }
    verify_file(card, exported)
    embedded = read_onnx_card(exported)
    assert embedded is not None and embedded.export == card.export


def test_card_in_metadata_alone_loads_and_verifies(exported: Path, work: Path) -> None:
    import onnx

    alone = work / "alone" / "copied.onnx"
    alone.parent.mkdir()
    alone.write_bytes(exported.read_bytes())
    assert not sidecar_path(alone).exists()
    card = load_card(alone)
    assert card.file == "copied.onnx" and card.export is not None
    verify_file(card, resolve_model_path(card))  # content hash: the file without its card entry
    model = onnx.load(str(alone))
    assert [p.key for p in model.metadata_props].count(CARD_METADATA_KEY) == 1
    # tampering with the weights is caught
    init = model.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(alone))
    from facematch.errors import ChecksumMismatchError

    with pytest.raises(ChecksumMismatchError):
        verify_file(card, alone)


def test_facematcher_loads_the_export(exported: Path, faces: FaceSet, matcher: object) -> None:
    from facematch import FaceMatcher

    fm = FaceMatcher(embedder=str(exported))
    assert fm.model_id == "my_mbf" and fm.dim == 512
    crops = faces.crops[:16]
    got = fm.embed_aligned(crops)
    ref = matcher.embed_aligned(crops)  # type: ignore[attr-defined]
    assert float(np.min(np.sum(got * ref, axis=1))) >= 0.9999
    with pytest.raises(CalibrationMissingError):
        fm.threshold_for()


def test_fp16_of_export(exported: Path, work: Path, faces: FaceSet) -> None:
    import onnx
    from facematch.export.fp16 import convert_fp16

    res = convert_fp16(exported, work / "my_mbf_fp16.onnx", faces=faces.subset(range(0, len(faces), 4)))
    assert res.report.passed and res.report.faces_min_cos is not None and res.report.faces_min_cos >= 0.999
    assert res.report.norm_max_rel_err is not None and res.report.norm_max_rel_err < 1e-2
    card = load_card(res.path)
    assert card.precision == "fp16" and card.calibration is None and card.embedding == load_card(exported).embedding
    model = onnx.load(str(res.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io types kept
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def test_quantize_w600k_declared_shape_fixed_and_measured(w600k: Path, work: Path, faces: FaceSet) -> None:
    import onnx
    from facematch.export.quantize import quantize_int8

    res = quantize_int8(w600k, work / "w600k_int8.onnx", faces.root, calib_count=200, faces=faces, force=True)
    rep = res.report
    # calibration faces are left out of the check
    assert rep.n_images == len(faces) - 200
    assert not rep.passed or rep.faces_min_cos >= 0.99  # the verdict follows the 0.99 bar
    assert rep.faces_mean_cos is not None and rep.faces_mean_cos >= 0.995
    assert rep.faces_min_cos is not None and rep.faces_min_cos >= 0.98
    assert rep.tar is not None and rep.tar.delta is not None and abs(rep.tar.delta) <= 0.01
    card = load_card(res.path)
    assert card.precision == "int8" and card.opset == 13 and card.calibration is None
    assert card.export is not None and card.export["options"]["quantized_convs"].endswith("/49")
    model = onnx.load(str(res.path))
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert not out_dims[0].HasField("dim_value")  # declared 1x512 in w600k_mbf, dynamic here
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def test_naive_quantization_fails_the_check(w600k: Path, work: Path, faces: FaceSet) -> None:
    from facematch.export.quantize import quantize_int8

    out = work / "naive_int8.onnx"
    with pytest.raises(ExportValidationError, match="int8"):
        quantize_int8(
            w600k,
            out,
            faces.root,
            calib_count=64,
            method="minmax",
            keep_float="none",
            faces=faces.subset(range(0, len(faces), 3)),
        )
    assert not out.exists() and not sidecar_path(out).exists()
