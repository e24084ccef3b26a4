"""Checkpoint loading: wrappers, prefixes, strict matching with a clear error, sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from facematch.export.backbones import build_backbone  # noqa: E402
from facematch.export.checkpoint import CheckpointError, load_backbone, read_checkpoint  # noqa: E402

from facematch.errors import FacematchError, ModelNotFoundError  # noqa: E402

ARCH = "mbf"


@pytest.fixture(scope="module")
def state() -> dict[str, object]:
    torch.manual_seed(3)
    model = build_backbone(ARCH)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.state_dict()


def _same(model: object, sd: dict[str, object]) -> bool:
    got = model.state_dict()  # type: ignore[attr-defined]
    return all(torch.equal(got[k], v) for k, v in sd.items())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {"backbone": sd},
        lambda sd: {"state_dict_backbone": sd, "state_dict_softmax_fc": {"weight": torch.zeros(2, 2)}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": {"state_dict": sd}},
        lambda sd: {"ema": sd},
    ],
    ids=["plain", "state_dict", "model", "backbone", "arcface_torch", "module", "ddp", "nested", "ema"],
)
def test_wrappers_load(tmp_path: Path, state: dict[str, object], wrap: object) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(state), path)  # type: ignore[operator]
    model, info = load_backbone(ARCH, path)
    assert _same(model, state)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_prefer_ema(tmp_path: Path, state: dict[str, object]) -> None:
    other = build_backbone(ARCH).state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": other, "model_ema": state}, path)
    model, info = load_backbone(ARCH, path, prefer_ema=True)
    assert info.container == "model_ema" and _same(model, state)
    model, info = load_backbone(ARCH, path)
    assert info.container == "state_dict" and _same(model, other)


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path: Path, state: dict[str, object]) -> None:
    sd = dict(state)
    sd.pop("conv_sep.layers.0.weight")
    sd["head.kernel"] = torch.zeros(3)
    sd["features.layers.2.weight"] = torch.zeros(128, 512)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_backbone(ARCH, path)
    msg = info.value.message
    assert "missing 1: conv_sep.layers.0.weight" in msg
    assert "unexpected 1: head.kernel" in msg
    assert "features.layers.2.weight (checkpoint (128, 512) vs model (512, 512))" in msg
    assert info.value.details["missing"] == ["conv_sep.layers.0.weight"]
    assert isinstance(info.value, FacematchError)


def test_wrong_architecture_is_rejected(tmp_path: Path, state: dict[str, object]) -> None:
    path = tmp_path / "mbf.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not match the model for architecture 'r18'"):
        load_backbone("r18", path)


def test_num_batches_tracked_may_be_absent(tmp_path: Path, state: dict[str, object]) -> None:
    sd = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save(sd, path)
    model, info = load_backbone(ARCH, path)
    assert _same(model, sd) and info.dropped


def test_unreadable_and_non_state_dict_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        read_checkpoint(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="tensors-only"):
        read_checkpoint(junk)
    meta = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, meta)
    with pytest.raises(CheckpointError, match="top-level keys"):
        read_checkpoint(meta)
    pickled = tmp_path / "module.pt"
    torch.save(build_backbone(ARCH), pickled)  # a whole pickled nn.Module: refused (weights_only)
    with pytest.raises(CheckpointError, match="state_dict"):
        read_checkpoint(pickled)


def test_explicit_key(tmp_path: Path, state: dict[str, object]) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"weights": state}, path)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert read_checkpoint(path, key="weights").container == "weights"
    with pytest.raises(CheckpointError, match="no key 'nope'"):
        read_checkpoint(path, key="nope")
