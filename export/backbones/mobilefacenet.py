"""MobileFaceNet in the layout of insightface ``arcface_torch`` ("mbf", ``backbones/mobilefacenet.py``).

Module names follow arcface_torch (``layers`` of ``ConvBlock``/``DepthWise``/``Residual``, each
holding a ``layers`` Sequential; ``conv_sep``; ``features`` = GDC head), so its checkpoints load
with strict key matching.

``head="fc"`` is the variant of the released ``w600k_mbf`` model (InsightFace buffalo_s): after
``conv_sep`` a 1×1 ``ConvBlock`` 512→64 (``conv_reduce``), flatten, ``fc`` = Linear(64·7·7, 512)
with bias, and ``features`` = BatchNorm1d. ``fc``/``features`` are the names in its ONNX graph;
``conv_reduce`` is our name (the graph does not keep it).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv (no bias) → BN → PReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv (no bias) → BN, no activation."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1×1 expand to ``groups`` → depthwise 3×3 → 1×1 linear projection."""

    def __init__(self, cin: int, cout: int, residual: bool = False, stride: int = 2, groups: int = 1) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, groups, 1),
            ConvBlock(groups, groups, 3, stride=stride, padding=1, groups=groups),
            LinearBlock(groups, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual DepthWise blocks at constant width."""

    def __init__(self, c: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(DepthWise(c, c, residual=True, stride=1, groups=groups) for _ in range(num_block))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: depthwise k×k LinearBlock → flatten → Linear (no bias) → BN1d."""

    def __init__(self, num_features: int, side: int = 7) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=side, groups=512),
            nn.Flatten(),
            nn.Linear(512, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """arcface_torch MobileFaceNet (``mbf``: scale 2, blocks (1, 4, 6, 2); ``mbf_large``: scale 4, (2, 8, 12, 4))."""

    def __init__(
        self,
        num_features: int = 512,
        blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
        scale: int = 2,
        head: Literal["gdc", "fc"] = "gdc",
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input size must be a multiple of 16, got {input_size}")
        c1, c2 = 64 * scale, 128 * scale
        self.head = head
        first: nn.Module = (
            ConvBlock(c1, c1, 3, stride=1, padding=1, groups=64) if blocks[0] == 1 else Residual(c1, blocks[0], 128)
        )
        self.layers = nn.ModuleList(
            [
                ConvBlock(3, c1, 3, stride=2, padding=1),
                first,
                DepthWise(c1, c1, stride=2, groups=128),
                Residual(c1, blocks[1], groups=128),
                DepthWise(c1, c2, stride=2, groups=256),
                Residual(c2, blocks[2], groups=256),
                DepthWise(c2, c2, stride=2, groups=512),
                Residual(c2, blocks[3], groups=256),
            ]
        )
        self.conv_sep = ConvBlock(c2, 512, 1)
        side = input_size // 16
        if head == "gdc":
            self.features: nn.Module = GDC(num_features, side)
        elif head == "fc":
            self.conv_reduce = ConvBlock(512, 64, 1)
            self.fc = nn.Linear(64 * side * side, num_features)
            self.features = nn.BatchNorm1d(num_features)
        else:
            raise ValueError(f"unknown MobileFaceNet head {head!r}")
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map the head reads: ``conv_sep``'s output (gdc, N×512×7×7) or
        ``conv_reduce``'s (fc, N×64×7×7, the last PReLU of the released w600k_mbf)."""
        for layer in self.layers:
            x = layer(x)
        x = self.conv_sep(x)
        return self.conv_reduce(x) if self.head == "fc" else x

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """gdc: depthwise k×k conv + BN → flatten → linear → BN1d; fc: flatten → fc → BN1d. Both affine in ``f``."""
        if self.head == "fc":
            return self.features(self.fc(torch.flatten(f, 1)))
        return self.features(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def mobilefacenet(name: str, *, num_features: int = 512, input_size: int = 112) -> MobileFaceNet:
    """Build ``mbf`` (arcface_torch default), ``mbf_large``, or ``mbf_fc`` (the released w600k_mbf layout)."""
    if name == "mbf":
        return MobileFaceNet(num_features, input_size=input_size)
    if name == "mbf_large":
        return MobileFaceNet(num_features, blocks=(2, 8, 12, 4), scale=4, input_size=input_size)
    if name == "mbf_fc":
        return MobileFaceNet(num_features, head="fc", input_size=input_size)
    raise KeyError(name)


__all__ = ["GDC", "ConvBlock", "DepthWise", "LinearBlock", "MobileFaceNet", "Residual", "mobilefacenet"]
