"""iResNet-18/34/50/100/200 in the layout of insightface ``arcface_torch`` (``backbones/iresnet.py``).

The attribute names (``conv1``, ``bn1``, ``prelu``, ``layer1..4`` of ``IBasicBlock`` with
``bn1/conv1/bn2/prelu/conv2/bn3/downsample``, then ``bn2``, ``dropout``, ``fc``, ``features``)
are those of arcface_torch, so its checkpoints load with strict key matching.
"""

from __future__ import annotations

import torch
from torch import nn

DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation basic block: BN → 3×3 conv → BN → PReLU → 3×3 conv (stride) → BN, plus shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """The arcface_torch iResNet: four stride-2 stages, then BN → flatten → dropout → fc → BN1d."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        num_features: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input size must be a multiple of 16, got {input_size}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        side = input_size // 16
        self.fc = nn.Linear(512 * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        mods: list[nn.Module] = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        mods.extend(IBasicBlock(planes, planes) for _ in range(1, blocks))
        return nn.Sequential(*mods)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, 512, H/16, W/16): what the head reads."""
        x = self.prelu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """BN → flatten → dropout (identity at inference) → fc → BN1d: affine in ``f``."""
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(f), 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def iresnet(name: str, *, num_features: int = 512, input_size: int = 112) -> IResNet:
    """Build ``r18``/``r34``/``r50``/``r100``/``r200``."""
    return IResNet(DEPTHS[name], num_features=num_features, input_size=input_size)


__all__ = ["DEPTHS", "IBasicBlock", "IResNet", "iresnet"]
