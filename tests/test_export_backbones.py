"""Backbone layouts (state_dict keys of the reference code) and random-init ONNX/PyTorch parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _export_util import tame_random_checkpoint  # noqa: E402
from facematch.export.backbones import ARCHS, build_backbone, canonical_arch  # noqa: E402

from facematch.errors import InvalidArgumentError  # noqa: E402
from facematch.model_files import load_card  # noqa: E402

# keys that arcface_torch / opensphere checkpoints contain (spot checks of every part of each layout)
EXPECTED_KEYS = {
    "r50": [
        "conv1.weight",
        "bn1.running_var",
        "prelu.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.num_batches_tracked",
        "layer1.0.prelu.weight",
        "layer1.0.conv2.weight",
        "layer1.0.bn3.bias",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer3.13.bn3.weight",
        "bn2.weight",
        "fc.weight",
        "fc.bias",
        "features.weight",
        "features.running_mean",
    ],
    "mbf": [
        "layers.0.layers.0.weight",
        "layers.0.layers.1.running_mean",
        "layers.0.layers.2.weight",
        "layers.1.layers.0.weight",
        "layers.2.layers.0.layers.0.weight",
        "layers.2.layers.1.layers.2.weight",
        "layers.2.layers.2.layers.1.running_var",
        "layers.3.layers.3.layers.2.layers.0.weight",
        "layers.7.layers.1.layers.1.layers.0.weight",
        "conv_sep.layers.0.weight",
        "conv_sep.layers.2.weight",
        "features.layers.0.layers.0.weight",
        "features.layers.0.layers.1.bias",
        "features.layers.2.weight",
        "features.layers.3.running_var",
    ],
    "sfnet20": [
        "layer1.0.conv1.weight",
        "layer1.0.conv1.bias",
        "layer1.1.conv1.bias",
        "layer1.1.conv2.weight",
        "layer3.4.conv2.bias",
        "fc.weight",
        "fc.bias",
    ],
    "sfnet20_bn": [
        "layer1.0.conv1.weight",
        "layer1.0.bn1.running_mean",
        "layer1.1.bn2.weight",
        "layer4.1.bn1.num_batches_tracked",
        "fc.weight",
        "features.running_var",
    ],
}
ABSENT_KEYS = {
    "mbf": ["features.layers.2.bias", "layers.0.layers.0.bias"],
    "sfnet20": ["layer1.0.bn1.weight", "features.weight", "features.running_mean"],
    "sfnet20_bn": ["layer1.0.conv1.bias", "layer2.1.conv2.bias"],
    "r50": ["conv1.bias", "layer1.1.downsample.0.weight"],
}


@pytest.mark.parametrize("arch", sorted(EXPECTED_KEYS))
def test_state_dict_keys_follow_reference_layout(arch: str) -> None:
    keys = set(build_backbone(arch).state_dict())
    assert not [k for k in EXPECTED_KEYS[arch] if k not in keys]
    assert not [k for k in ABSENT_KEYS[arch] if k in keys]


@pytest.mark.parametrize(
    ("arch", "depths"),
    [
        ("r18", (2, 2, 2, 2)),
        ("r34", (3, 4, 6, 3)),
        ("r50", (3, 4, 14, 3)),
        ("r100", (3, 13, 30, 3)),
        ("r200", (6, 26, 60, 6)),
    ],
)
def test_iresnet_depths(arch: str, depths: tuple[int, ...]) -> None:
    model = build_backbone(arch)
    assert tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)) == depths


@pytest.mark.parametrize(
    ("arch", "blocks"), [("sfnet20", (1, 2, 4, 1)), ("sfnet36", (2, 4, 8, 2)), ("sfnet64", (3, 8, 16, 3))]
)
def test_sfnet_depths(arch: str, blocks: tuple[int, ...]) -> None:
    for name in (arch, arch + "_bn"):
        model = build_backbone(name)
        # each stage: one stride-2 ConvBlock + n BasicBlocks
        assert tuple(len(getattr(model, f"layer{i}")) - 1 for i in range(1, 5)) == blocks


def test_parameter_counts_match_published_sizes() -> None:
    # arcface_torch: r50 43.6M parameters, r100 65.2M (512-d, 112x112)
    assert sum(p.numel() for p in build_backbone("r50").parameters()) == 43_590_848
    assert sum(p.numel() for p in build_backbone("r100").parameters()) == 65_156_160


def test_unknown_arch_and_bad_sizes_are_rejected() -> None:
    assert canonical_arch("iresnet50") == "r50"
    with pytest.raises(InvalidArgumentError, match="unknown architecture"):
        canonical_arch("resnet50")
    with pytest.raises(InvalidArgumentError, match="multiple of 16"):
        build_backbone("r18", input_size=100)


def test_other_input_size_changes_fc() -> None:
    model = build_backbone("r18", input_size=128)
    assert model.fc.in_features == 512 * 8 * 8
    with torch.no_grad():
        assert tuple(model(torch.zeros(2, 3, 128, 128)).shape) == (2, 512)


SLOW = ("r100", "r200")  # the deepest iResNets: tens of seconds each on a 2-core CPU
FAST = [a for a in ARCHS if a not in SLOW]


@pytest.mark.parametrize("arch", [*FAST, *(pytest.param(a, marks=pytest.mark.slow) for a in SLOW)])
def test_random_init_export_matches_pytorch(arch: str, tmp_path: Path) -> None:
    from facematch.export.onnx_export import export_onnx

    ckpt = tmp_path / f"{arch}.pt"
    model = tame_random_checkpoint(arch, ckpt)
    res = export_onnx(arch, ckpt, tmp_path / f"{arch}.onnx", normalize=True)
    assert res.report.passed, res.report.summary()
    assert {(c.name, c.batch) for c in res.report.checks} == {("random", 1), ("random", 7)}
    assert all(c.min_cos >= 0.9999 for c in res.report.checks)
    card = load_card(tmp_path / f"{arch}.onnx")
    assert card.arch == arch and card.embedding is not None and card.embedding.dim == 512
    # direct parity: the written file against the PyTorch model, unit-norm output
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((3, 3, 112, 112)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / f"{arch}.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model(torch.from_numpy(x)), dim=1).numpy()
    assert got.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(got * ref, axis=1))) >= 0.9999
