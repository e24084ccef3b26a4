"""Helpers of the export tests: deterministic, numerically tame random checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tame_random_checkpoint(arch: str, path: Path, seed: int = 0) -> Any:
    """Save a random-init state_dict of ``arch`` whose activations stay finite through deep nets.

    Residual branches end in a BatchNorm; scaling its weight down (as ``zero_init_residual`` does,
    but not to zero) keeps a 200-layer random iResNet from overflowing. BN statistics are randomised
    so the export must carry them correctly.
    """
    import torch
    from facematch.export.backbones import build_backbone
    from torch import nn

    torch.manual_seed(seed)
    model = build_backbone(arch)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                m.weight.mul_(0.5)
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.weight.uniform_(0.8, 1.2)
            residual_end = name.endswith(".bn3") or (name.endswith(".bn2") and arch.startswith("sfnet"))
            if residual_end and isinstance(m, nn.BatchNorm2d):
                m.weight.mul_(0.1)
    torch.save(model.state_dict(), path)
    return model
