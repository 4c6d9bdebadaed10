"""Model registry: ``build_model(arch, ...)`` for the architectures the paper uses.

Every model exposes its final ``nn.Linear`` as ``model.classifier``; the penultimate activations
(what the detector models) are that layer's input, so ``feature_dim(model)`` is its ``in_features``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from poisondetect.errors import PoisonDetectError
from poisondetect.models.cnn import build_cnn
from poisondetect.models.resnet import build_resnet18, build_resnet152
from poisondetect.models.vgg import build_vgg16, build_vgg19
from poisondetect.models.wide_resnet import build_wrn28_10

Builder = Callable[[int, int, tuple[int, int], float], nn.Module]

ARCHITECTURES: dict[str, Builder] = {
    "cnn": build_cnn,
    "resnet18": build_resnet18,
    "resnet152": build_resnet152,
    "wrn28_10": build_wrn28_10,
    "vgg16": build_vgg16,
    "vgg19": build_vgg19,
}

__all__ = ["ARCHITECTURES", "build_model", "feature_dim", "image_hw"]


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``32`` or ``(32, 32)`` -> ``(32, 32)``; anything else -> PoisonDetectError."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        hw = (image_size, image_size)
    elif (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)
    ):
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise PoisonDetectError(
            f"image_size must be an int or a pair of ints (height, width), got {image_size!r}"
        )
    if min(hw) < 1:
        raise PoisonDetectError(f"image_size must be positive, got {image_size!r}")
    return hw


def build_model(
    arch: str,
    in_channels: int,
    num_classes: int,
    image_size: int | Sequence[int],
    width: float = 1.0,
) -> nn.Module:
    """Build ``arch`` for ``in_channels`` x ``image_size`` inputs and ``num_classes`` outputs.

    ``width`` scales every channel count and hidden width (at least 1 channel each); 1.0 gives the
    paper's sizes.
    """
    if arch not in ARCHITECTURES:
        raise PoisonDetectError(
            f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}"
        )
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PoisonDetectError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise PoisonDetectError(f"width must be a positive number, got {width!r}")
    hw = image_hw(image_size)
    if arch == "cnn" and min(hw) < 4:
        raise PoisonDetectError(
            f"the cnn architecture needs images of at least 4x4 pixels (two 2x2 max-pools), "
            f"got {hw[0]}x{hw[1]}"
        )
    return ARCHITECTURES[arch](in_channels, num_classes, hw, float(width))


def feature_dim(model: nn.Module) -> int:
    """Width of the penultimate activations: ``model.classifier.in_features``."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise PoisonDetectError(
            f"{type(model).__name__} has no final nn.Linear named 'classifier'; build models "
            "with poisondetect.models.build_model"
        )
    return int(classifier.in_features)
