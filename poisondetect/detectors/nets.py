"""Small torch auto-encoders shared by the detectors (the networks only; the training loop is
``poisondetect.fitting``).

- ``mlp`` / ``DenseAutoencoder``: fully connected nets for vectors (activations, generic features).
- ``ConvAutoencoder``: the MagNet-style convolutional auto-encoders of Razmi & Xiong (3 filters of
  3x3, sigmoid activations, optional 2x2 pooling / up-sampling).
- ``build_autoencoder`` by architecture name; ``model_input`` reshapes checked features for one.

Every auto-encoder exposes ``encode(x)``, ``decode(z)`` and ``forward(x) -> x_hat``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from poisondetect.errors import PoisonDetectError

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


def make_activation(name: str | None) -> nn.Module:
    """An activation module by name (``None`` -> identity)."""
    if name is None:
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise PoisonDetectError(
            f"activation {name!r} is unknown; use one of {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]()


def glorot_init(module: nn.Module) -> None:
    """Keras' default initialisation (Glorot-uniform weights, zero biases) for linear/conv layers."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def mlp(
    sizes: Sequence[int], activation: str = "relu", final_activation: str | None = None
) -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``; ``activation`` between them,
    ``final_activation`` (or none) after the last."""
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise PoisonDetectError(f"mlp sizes must be >= 2 positive integers, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(int(a), int(b)))
        if i < len(sizes) - 2:
            layers.append(make_activation(activation))
        elif final_activation is not None:
            layers.append(make_activation(final_activation))
    return nn.Sequential(*layers)


class DenseAutoencoder(nn.Module):
    """``input_dim -> hidden... -> latent -> reversed(hidden)... -> input_dim``.

    ``activation`` between hidden layers; ``latent_activation`` on the code (``None``: linear);
    ``output_activation`` is ``None`` (linear output, e.g. for activations) or ``"sigmoid"`` (for
    inputs in ``[0, 1]``).
    """

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int] = (256,),
        latent: int = 64,
        output_activation: str | None = None,
        activation: str = "relu",
        latent_activation: str | None = "relu",
    ) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        self.input_dim, self.latent_dim = int(input_dim), int(latent)
        self.encoder = mlp([input_dim, *hidden, latent], activation, latent_activation)
        self.decoder = mlp([latent, *reversed(hidden), input_dim], activation, output_activation)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)  # Keras 'same' padding for 3x3


class ConvAutoencoder(nn.Module):
    """MagNet-style convolutional auto-encoder for images ``(N, C, H, W)`` in ``[0, 1]``.

    ``pool=None`` (CIFAR variant, MagNet's second MNIST detector):
        encoder Conv(f) | decoder Conv(f) -> Conv(C)
    ``pool="max"`` or ``"avg"`` (MNIST / Fashion-MNIST variant):
        encoder Conv(f) -> Pool2x2 -> Conv(f) | decoder Conv(f) -> UpSample2x2 -> Conv(f) -> Conv(C)
    All convolutions are 3x3, stride 1, 'same' padding, sigmoid activations (output included).
    Pooling uses ceil mode and the output is cropped, so odd sizes work as Keras' 'same' pooling.
    """

    def __init__(self, in_channels: int, filters: int = 3, pool: str | None = "max") -> None:
        super().__init__()
        if pool not in (None, "max", "avg"):
            raise PoisonDetectError(f"pool must be None, 'max' or 'avg', got {pool!r}")
        self.in_channels, self.filters, self.pool = int(in_channels), int(filters), pool
        if pool is None:
            self.encoder = nn.Sequential(_conv(in_channels, filters), nn.Sigmoid())
            self.decoder = nn.Sequential(
                _conv(filters, filters), nn.Sigmoid(), _conv(filters, in_channels), nn.Sigmoid()
            )
        else:
            pool_layer = (
                nn.MaxPool2d(2, ceil_mode=True)
                if pool == "max"
                else nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
            )
            self.encoder = nn.Sequential(
                _conv(in_channels, filters),
                nn.Sigmoid(),
                pool_layer,
                _conv(filters, filters),
                nn.Sigmoid(),
            )
            self.decoder = nn.Sequential(
                _conv(filters, filters),
                nn.Sigmoid(),
                nn.Upsample(scale_factor=2, mode="nearest"),
                _conv(filters, filters),
                nn.Sigmoid(),
                _conv(filters, in_channels),
                nn.Sigmoid(),
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.decode(self.encode(x))[..., :h, :w]


ARCHITECTURES = ("conv", "conv_avgpool", "conv_nopool", "dense")


def build_autoencoder(
    arch: str,
    input_shape: Sequence[int],
    *,
    filters: int = 3,
    hidden: Sequence[int] = (256,),
    latent: int = 64,
) -> nn.Module:
    """An auto-encoder for inputs of shape ``(N, *input_shape)`` with Keras-style initialisation.

    ``conv``: ``ConvAutoencoder(pool="max")`` (the paper's RAE / CAE for MNIST and Fashion-MNIST);
    ``conv_avgpool``: the same with average pooling (MagNet detector I);
    ``conv_nopool``: ``ConvAutoencoder(pool=None)`` (the paper's CIFAR-10 variant, MagNet detector II);
    ``dense``: ``DenseAutoencoder(D, hidden, latent, output_activation="sigmoid")``.
    """
    if arch == "dense":
        if len(input_shape) != 1:
            raise PoisonDetectError(
                f"arch 'dense' needs flat input, got shape {tuple(input_shape)}"
            )
        net: nn.Module = DenseAutoencoder(
            input_shape[0], hidden, latent, output_activation="sigmoid"
        )
    elif arch in ("conv", "conv_avgpool", "conv_nopool"):
        if len(input_shape) != 3:
            raise PoisonDetectError(
                f"arch {arch!r} needs image input (C, H, W), got {tuple(input_shape)}"
            )
        pool = {"conv": "max", "conv_avgpool": "avg", "conv_nopool": None}[arch]
        net = ConvAutoencoder(input_shape[0], filters=filters, pool=pool)
    else:
        raise PoisonDetectError(f"arch {arch!r} is unknown; use one of {list(ARCHITECTURES)}")
    glorot_init(net)
    return net


def latent_size(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of features of ``net.encode`` for one input (flattened)."""
    with torch.no_grad():
        z = net.encode(torch.zeros(1, *input_shape))
    return int(z[0].numel())


def infer_image_shape(dim: int) -> tuple[int, int, int]:
    """``(1, s, s)`` when ``dim = s*s``, ``(3, s, s)`` when ``dim = 3*s*s``; else an error."""
    s = math.isqrt(dim)
    if s * s == dim:
        return (1, s, s)
    s = math.isqrt(dim // 3)
    if dim % 3 == 0 and 3 * s * s == dim:
        return (3, s, s)
    raise PoisonDetectError(
        f"cannot tell the image shape of {dim} features; pass image_shape=(C, H, W) or use arch='dense'"
    )


def model_input(x: np.ndarray, arch: str, image_shape: Sequence[int] | None) -> np.ndarray:
    """Reshape checked features for an architecture: images for conv archs, flat for dense."""
    n = len(x)
    if arch == "dense":
        return x.reshape(n, -1)
    if arch not in ARCHITECTURES:
        raise PoisonDetectError(f"arch {arch!r} is unknown; use one of {list(ARCHITECTURES)}")
    if x.ndim == 4:
        if image_shape is not None and tuple(image_shape) != x.shape[1:]:
            raise PoisonDetectError(
                f"image_shape {tuple(image_shape)} does not match X {x.shape[1:]}"
            )
        return x
    shape = (
        tuple(int(s) for s in image_shape)
        if image_shape is not None
        else infer_image_shape(x.shape[1])
    )
    if math.prod(shape) != x.shape[1]:
        raise PoisonDetectError(f"image_shape {shape} does not hold {x.shape[1]} features")
    return x.reshape(n, *shape)
