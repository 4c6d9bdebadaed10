"""The paper's small CNN: ``32C3-32C3-MP2-64C3-64C3-MP2-512FC-10FC`` ('same' padding, ReLU)."""

from __future__ import annotations

import torch
from torch import nn


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class CNN(nn.Module):
    """Two conv blocks (32, 64 channels) with 2x2 max-pools, a 512-unit hidden layer, a linear head.

    The penultimate activations are the ReLU outputs of the 512-unit layer (the classifier's input).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: tuple[int, int] = (32, 32),
        width: float = 1.0,
    ) -> None:
        super().__init__()
        c1, c2, hidden = _scaled(32, width), _scaled(64, width), _scaled(512, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        h, w = image_size[0] // 4, image_size[1] // 4
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * h * w, hidden),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))


def build_cnn(
    in_channels: int, num_classes: int, image_size: tuple[int, int], width: float = 1.0
) -> CNN:
    """The paper's CNN for ``image_size`` inputs (each side at least 4 pixels)."""
    return CNN(in_channels, num_classes, image_size, width)
