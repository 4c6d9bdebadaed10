"""CIFAR-style VGG with BatchNorm and a single linear classifier, after kuangliu/pytorch-cifar."""

from __future__ import annotations

import torch
from torch import nn

CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],  # fmt: skip
}


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class VGG(nn.Module):
    """Conv3x3-BN-ReLU stacks with 2x2 max-pools, global average pool, one linear classifier.

    A max-pool is skipped once the feature map is smaller than 2 pixels on a side, so small inputs
    (8x8, 28x28) work. The penultimate activations are the pooled features (the classifier's input).
    """

    def __init__(
        self,
        config: list[int | str],
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: tuple[int, int] = (32, 32),
        width: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        h, w = image_size
        for item in config:
            if item == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    h, w = h // 2, w // 2
            else:
                out = _scaled(int(item), width)
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # identity at 1x1, as for 32x32 CIFAR inputs
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_vgg16(
    in_channels: int, num_classes: int, image_size: tuple[int, int], width: float = 1.0
) -> VGG:
    """VGG-16 with BatchNorm."""
    return VGG(CONFIGS["vgg16"], in_channels, num_classes, image_size, width)


def build_vgg19(
    in_channels: int, num_classes: int, image_size: tuple[int, int], width: float = 1.0
) -> VGG:
    """VGG-19 with BatchNorm."""
    return VGG(CONFIGS["vgg19"], in_channels, num_classes, image_size, width)
