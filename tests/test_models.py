"""Model registry: shapes for every arch and input size, the paper's CNN, parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from poisondetect.activations import iter_penultimate
from poisondetect.errors import PoisonDetectError
from poisondetect.models import ARCHITECTURES, build_model, feature_dim

SMALL_WIDTH = {"cnn": 0.25, "resnet18": 0.125, "resnet152": 0.0625, "wrn28_10": 0.05}
INPUTS = [(1, 8), (1, 28), (3, 32)]  # (channels, side)

# Feature width and parameter count at width 1 for 3x32x32 inputs and 10 classes. The counts match
# the reference CIFAR implementations (kuangliu/pytorch-cifar; WRN-28-10: 36.5M).
PAPER_SIZES = {
    "cnn": (512, 2_168_362),
    "resnet18": (512, 11_173_962),
    "resnet152": (2048, 58_156_618),
    "wrn28_10": (640, 36_479_194),
    "vgg16": (512, 14_728_266),
    "vgg19": (512, 20_040_522),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("channels", "side"), INPUTS)
def test_activation_width_matches_feature_dim(arch: str, channels: int, side: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, channels, 7, side, width=SMALL_WIDTH.get(arch, 0.125))
    x = np.random.default_rng(0).random((3, channels, side, side), dtype=np.float32)
    batches = list(iter_penultimate(model, x, batch_size=2))
    assert [start for start, _, _ in batches] == [0, 2]
    acts = np.concatenate([a for _, a, _ in batches])
    logits = np.concatenate([lg for _, _, lg in batches])
    assert acts.shape == (3, feature_dim(model))
    assert logits.shape == (3, 7)
    assert acts.dtype == np.float32 and logits.dtype == np.float32
    # The captured activations really are the classifier's input.
    with torch.no_grad():
        expected = model.classifier(torch.from_numpy(acts)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(PAPER_SIZES))
def test_paper_sizes_at_width_one(arch: str) -> None:
    with torch.device("meta"):  # no memory, no init cost
        model = build_model(arch, 3, 10, 32)
    dim, params = PAPER_SIZES[arch]
    assert feature_dim(model) == dim
    assert sum(p.numel() for p in model.parameters()) == params


def test_cnn_layer_sequence() -> None:
    model = build_model("cnn", 3, 10, 32)
    layers = [m for m in model.modules() if not isinstance(m, nn.Sequential) and m is not model]
    described = []
    for m in layers:
        if isinstance(m, nn.Conv2d):
            assert m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            described.append(f"{m.out_channels}C3")
        elif isinstance(m, nn.MaxPool2d):
            described.append("MP2")
        elif isinstance(m, nn.Linear):
            described.append(f"{m.out_features}FC")
        elif isinstance(m, nn.ReLU):
            described.append("R")
    assert "-".join(d for d in described if d != "R") == "32C3-32C3-MP2-64C3-64C3-MP2-512FC-10FC"
    assert described.count("R") == 5  # after each conv and after the 512 FC
    assert model.fc[1].in_features == 64 * 8 * 8
    assert feature_dim(model) == 512
    assert build_model("cnn", 1, 10, 28).fc[1].in_features == 64 * 7 * 7


def test_width_scales_channels() -> None:
    assert feature_dim(build_model("resnet18", 3, 10, 32, width=0.25)) == 128
    assert feature_dim(build_model("cnn", 3, 10, 32, width=0.5)) == 256
    assert feature_dim(build_model("vgg16", 3, 10, 32, width=0.001)) == 1  # at least 1 channel


def test_vgg_skips_pools_on_small_inputs() -> None:
    pools = [
        sum(isinstance(m, nn.MaxPool2d) for m in build_model("vgg19", 1, 10, side, 0.05).modules())
        for side in (8, 28, 32)
    ]
    assert pools == [3, 4, 5]


def test_unknown_arch_lists_known_ones() -> None:
    with pytest.raises(PoisonDetectError, match="resnet18.*vgg19|wrn28_10"):
        build_model("resnet50", 3, 10, 32)


@pytest.mark.parametrize(
    "kwargs",
    [{"in_channels": 0}, {"num_classes": 0}, {"image_size": 0}, {"width": 0.0}, {"image_size": 2}],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    args = {"arch": "cnn", "in_channels": 3, "num_classes": 10, "image_size": 32} | kwargs
    with pytest.raises(PoisonDetectError):
        build_model(**args)


def test_feature_dim_needs_classifier() -> None:
    with pytest.raises(PoisonDetectError, match="classifier"):
        feature_dim(nn.Sequential(nn.Linear(2, 2)))
