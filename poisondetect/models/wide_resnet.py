"""Wide-ResNet (Zagoruyko & Komodakis 2016) for CIFAR: pre-activation blocks, depth 6n+4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class WideBasic(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3, 1x1 projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        # With a projection, the shortcut starts from the pre-activated input (as in the original).
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem (16), three stages of 16k, 32k, 64k planes, final BN-ReLU, avg pool.

    The penultimate activations are the pooled features (the classifier's input).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide-ResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        stem = _scaled(16, width)
        planes = [_scaled(c * widen_factor, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.in_planes = stem
        self.layer1 = self._make_layer(planes[0], n, 1, dropout)
        self.layer2 = self._make_layer(planes[1], n, 2, dropout)
        self.layer3 = self._make_layer(planes[2], n, 2, dropout)
        self.bn = nn.BatchNorm2d(planes[2])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(planes[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(WideBasic(self.in_planes, planes, s, dropout))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.classifier(torch.flatten(self.pool(out), 1))


def build_wrn28_10(
    in_channels: int, num_classes: int, image_size: tuple[int, int], width: float = 1.0
) -> WideResNet:
    """WRN-28-10 (no dropout); any image size (adaptive pooling)."""
    return WideResNet(28, 10, in_channels, num_classes, width)
