"""Exported models carry their feature map as an output and an ``explain`` block; their heads decompose exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _export_util import tame_random_checkpoint  # noqa: E402

from facematch import FaceMatcher  # noqa: E402
from facematch.explain_graph import decomposer_for  # noqa: E402
from facematch.model_files import load_card, resolve_model_path  # noqa: E402


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEMATCH_CACHE_DIR", str(tmp_path / "cache"))


def _pair(celeb24_dir: Path) -> tuple[Path, Path]:
    files = sorted((celeb24_dir / "Barack_Obama").iterdir())
    return files[0], files[1]


@pytest.mark.parametrize(
    ("arch", "normalize", "channels"),
    [("mbf", False, 512), ("mbf_fc", True, 64), ("r18", True, 512), ("sfnet20_bn", False, 512)],
)
def test_export_writes_the_feature_output_and_the_explain_block(
    arch: str, normalize: bool, channels: int, tmp_path: Path, celeb24_dir: Path
) -> None:
    import onnx
    from facematch.export.onnx_export import export_onnx

    ckpt = tmp_path / f"{arch}.pt"
    tame_random_checkpoint(arch, ckpt)
    res = export_onnx(arch, ckpt, tmp_path / f"{arch}.onnx", normalize=normalize, with_norm=normalize)
    assert res.report.passed, res.report.summary()
    card = load_card(res.path)
    assert card.explain is not None and card.explain.feature == "features"
    assert card.explain.feature_shape == (channels, 7, 7) and "affine" in card.explain.head
    graph = onnx.load(str(res.path)).graph
    names = [o.name for o in graph.output]
    assert names == (["embedding", "norm", "features"] if normalize else ["embedding", "features"])
    dims = graph.output[-1].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [channels, 7, 7]
    # the explain block is in the card embedded in the file too
    from facematch.cards import read_onnx_card

    embedded = read_onnx_card(res.path)
    assert embedded is not None and embedded.explain == card.explain

    m = FaceMatcher(embedder=str(res.path), workers=1)
    a, b = _pair(celeb24_dir)
    ex = m.explain(a, b, aligned=True, threshold=0.5)
    assert ex.method == "decomposition" and ex.residual is not None and ex.residual <= 1e-4
    assert ex.similarity == pytest.approx(m.verify(a, b, aligned=True, threshold=0.5).similarity, abs=1e-6)
    dec = decomposer_for(m.embedder)
    if normalize:  # the head ends before the L2 normalisation, at a tensor the graph does not output
        assert card.explain.embedding_output not in (None, "embedding")
        assert dec.features_session is not m.embedder.session
    else:  # the file already outputs both: the embedder's own session serves the decomposition
        assert card.explain.embedding_output is None and dec.features_session is m.embedder.session


def test_ported_default_model_decomposes_like_the_original(tmp_path: Path, celeb24_dir: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    """w600k_mbf ported into the PyTorch MobileFaceNet and exported again: its `features` output is the card's
    tensor '513' of the original, so the two decompositions agree."""
    from facematch.export.backbones import build_backbone
    from facematch.export.onnx_export import export_onnx
    from facematch.export.port import port_onnx_weights

    w600k = resolve_model_path(load_card("w600k_mbf"))
    ckpt = tmp_path / "w600k_port.pt"
    torch.save(port_onnx_weights(w600k, build_backbone("mbf_fc")), ckpt)
    res = export_onnx("mbf_fc", ckpt, tmp_path / "w600k_again.onnx")
    assert res.report.passed, res.report.summary()
    again = FaceMatcher(embedder=str(res.path), workers=1)
    for k in (0, 2):
        files = sorted((celeb24_dir / "Hugh_Laurie").iterdir())
        a, b = files[k], files[k + 1]
        want = matcher.explain(a, b, aligned=True)
        got = again.explain(a, b, aligned=True, threshold=want.threshold)
        assert got.method == want.method == "decomposition"
        assert got.similarity == pytest.approx(want.similarity, abs=2e-4)
        for g, w in zip(got.faces, want.faces, strict=True):
            np.testing.assert_allclose(g.cells, w.cells, atol=2e-4)
            assert g.bias == pytest.approx(w.bias, abs=2e-4)


def test_fp16_conversion_of_an_export_keeps_working_and_explains_by_occlusion(
    tmp_path: Path, celeb24_dir: Path
) -> None:
    """The `features` output is an Identity of the map the head reads, so fp16's keep_io_types does not
    hand the head a float32 copy; the fp16 graph no longer cuts at the feature: auto falls back, saying so."""
    from facematch.export.fp16 import convert_fp16
    from facematch.export.onnx_export import export_onnx

    ckpt = tmp_path / "mbf.pt"
    tame_random_checkpoint("mbf", ckpt)
    src = export_onnx("mbf", ckpt, tmp_path / "mbf.onnx")
    half = convert_fp16(src.path, tmp_path / "mbf_fp16.onnx")
    assert half.report.passed, half.report.summary()
    card = load_card(half.path)
    assert card.precision == "fp16" and card.explain == src.card.explain
    m = FaceMatcher(embedder=str(half.path), workers=1)
    a, b = _pair(celeb24_dir)
    ex = m.explain(a, b, aligned=True, threshold=0.5)
    assert ex.method == "occlusion" and "casts" in (ex.fallback_reason or "")
    assert ex.similarity == pytest.approx(m.verify(a, b, aligned=True, threshold=0.5).similarity, abs=1e-6)
