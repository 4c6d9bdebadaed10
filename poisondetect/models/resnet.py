"""CIFAR-style ResNets (3x3 stem, no initial max-pool), after kuangliu/pytorch-cifar."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a (projection when needed) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a (projection when needed) shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem, four stages (64, 128, 256, 512 planes; strides 1, 2, 2, 2), global average pool.

    The penultimate activations are the pooled features (the classifier's input).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: list[int],
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_planes = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, self.in_planes, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.layer1 = self._make_layer(block, _scaled(64, width), num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, _scaled(128, width), num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, _scaled(256, width), num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, _scaled(512, width), num_blocks[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.in_planes, num_classes)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, n: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.classifier(torch.flatten(self.pool(out), 1))


def build_resnet18(
    in_channels: int, num_classes: int, image_size: tuple[int, int], width: float = 1.0
) -> ResNet:
    """ResNet-18 (BasicBlock x [2, 2, 2, 2]); any image size (adaptive pooling)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channels, num_classes, width)


def build_resnet152(
    in_channels: int, num_classes: int, image_size: tuple[int, int], width: float = 1.0
) -> ResNet:
    """ResNet-152 (Bottleneck x [3, 8, 36, 3]); any image size (adaptive pooling)."""
    return ResNet(Bottleneck, [3, 8, 36, 3], in_channels, num_classes, width)
