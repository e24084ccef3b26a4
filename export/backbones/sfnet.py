"""SphereFace networks SFNet-20/36/64, with and without batch norm, in the layout of opensphere.

opensphere (the reference code of SphereFace2 and SphereFace-R, ``model/backbone/sfnet.py``)
builds each stage as a stride-2 ``ConvBlock`` (``conv1``/``bn1``/``relu``) followed by residual
``BasicBlock``s (``conv1``/``bn1``/``relu``/``conv2``/``bn2``), then flatten → ``dropout`` →
``fc`` → ``features``. Without batch norm the ``bn*`` and ``features`` modules are identities and
every conv has a bias; with batch norm convs have no bias and ``features`` is a BatchNorm1d.
"""

from __future__ import annotations

import torch
from torch import nn

DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "sfnet20": (1, 2, 4, 1),
    "sfnet36": (2, 4, 8, 2),
    "sfnet64": (3, 8, 16, 3),
}
CHANNELS = (64, 128, 256, 512)


def _norm(bn: bool, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if bn else nn.Identity()


class ConvBlock(nn.Module):
    """Stride-2 3×3 conv → (BN) → ReLU: the entry of each stage."""

    def __init__(self, cin: int, cout: int, stride: int, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not bn)
        self.bn1 = _norm(bn, cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))


class BasicBlock(nn.Module):
    """Two 3×3 convs with a ReLU between them and after the identity shortcut."""

    def __init__(self, c: int, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=not bn)
        self.bn1 = _norm(bn, c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=not bn)
        self.bn2 = _norm(bn, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + x)


class SFNet(nn.Module):
    """SFNet: four stages (stride-2 ConvBlock + ``n`` BasicBlocks), flatten, fc, optional BN1d."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        bn: bool = False,
        num_features: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input size must be a multiple of 16, got {input_size}")
        self.features: nn.Module = nn.BatchNorm1d(num_features, eps=1e-5) if bn else nn.Identity()
        cin = 3
        stages = []
        for c, n in zip(CHANNELS, layers, strict=True):
            stages.append(nn.Sequential(ConvBlock(cin, c, 2, bn), *(BasicBlock(c, bn) for _ in range(n))))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.dropout = nn.Dropout(p=dropout)
        side = input_size // 16
        self.fc = nn.Linear(CHANNELS[-1] * side * side, num_features)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, C, H/16, W/16): what the head reads."""
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """flatten → dropout (identity at inference) → fc → BN1d (or identity): affine in ``f``."""
        return self.features(self.fc(self.dropout(torch.flatten(f, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def sfnet(name: str, *, num_features: int = 512, input_size: int = 112) -> SFNet:
    """Build ``sfnet20``/``sfnet36``/``sfnet64`` (no BN) or the same names with ``_bn``."""
    base, bn = (name[:-3], True) if name.endswith("_bn") else (name, False)
    return SFNet(DEPTHS[base], bn=bn, num_features=num_features, input_size=input_size)


__all__ = ["DEPTHS", "BasicBlock", "ConvBlock", "SFNet", "sfnet"]
