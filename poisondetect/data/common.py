"""What the data readers share: the data set record, the readers' output, layout errors."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from poisondetect.errors import PoisonDetectError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
CACHE_VERSION = 1


@dataclass
class Dataset:
    """A train/test split of images (float32 (N, C, H, W) in [0, 1]) and int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])


@dataclass
class _Raw:
    """Reader output before scaling: uint8 pixels and the value that maps to 1.0."""

    name: str
    fmt: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    pixel_max: int

    def to_dataset(self) -> Dataset:
        scale = np.float32(self.pixel_max)
        return Dataset(
            name=self.name,
            x_train=self.x_train.astype(np.float32) / scale,
            y_train=self.y_train.astype(np.int64),
            x_test=self.x_test.astype(np.float32) / scale,
            y_test=self.y_test.astype(np.int64),
            classes=list(self.classes),
        )


def _layout_error(fmt: str, path: str | os.PathLike | None, problem: str) -> PoisonDetectError:
    from poisondetect.data.formats import FORMATS

    return PoisonDetectError(
        f"{path}: {problem}. Expected for format {fmt!r}: {FORMATS[fmt].description}. "
        "Nothing is downloaded: point the config at a local copy of the data."
    )


# --------------------------------------------------------------------------- public API
