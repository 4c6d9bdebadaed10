"""Small torch auto-encoders and one seeded training loop shared by the detectors.

- ``mlp`` / ``DenseAutoencoder``: fully connected nets for vectors (activations, generic features).
- ``ConvAutoencoder``: the MagNet-style convolutional auto-encoders of Razmi & Xiong (3 filters of
  3x3, sigmoid activations, optional 2x2 pooling / up-sampling).
- ``fit_loop``: Adam, seeded shuffles, optional validation split with best-weight restore and
  early stopping; one log line per epoch, a tqdm bar only on a terminal.
- ``batched_apply``: inference in batches, results back as numpy.

Every auto-encoder exposes ``encode(x)``, ``decode(z)`` and ``forward(x) -> x_hat``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from poisondetect.errors import PoisonDetectError
from poisondetect.runtime import deterministic_cuda, progress

log = logging.getLogger(__name__)

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


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and the given CUDA device) inside the block, restoring the caller's RNG state
    afterwards; deterministic algorithms are asked for on CUDA (see runtime.deterministic_cuda)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if device.type == "cuda":
            deterministic_cuda()
        yield


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into training and validation rows (at least one
    validation row when ``val_fraction > 0``): the last ``floor(n * val_fraction)`` positions of
    ``torch.randperm(n)`` drawn from a generator seeded with ``seed``."""
    if not 0.0 <= val_fraction < 1.0:
        raise PoisonDetectError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(math.floor(n * val_fraction))) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise PoisonDetectError(f"{n} rows are too few for val_fraction={val_fraction}")
    return order[: n - n_val], order[n - n_val :]


LossOut = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]


def fit_loop(
    model: nn.Module,
    loss_fn: Callable[..., LossOut],
    tensors: Sequence[np.ndarray | torch.Tensor],
    *,
    seed: int = 0,
    batch_size: int = 256,
    epochs: int = 100,
    lr: float = 1e-3,
    device: torch.device | str = "cpu",
    val_fraction: float = 0.0,
    patience: int | None = None,
    restore_best: bool = True,
    desc: str = "fit",
) -> list[dict[str, float]]:
    """Train ``model`` in place with Adam; return one history record per epoch.

    ``loss_fn(model, *batch)`` returns the mean loss of the batch, or ``(loss, metrics)`` where
    ``metrics`` maps names to batch means (logged and kept in the history, e.g. accuracy).
    With ``val_fraction > 0`` a seeded random share of the rows is held out: the validation loss is
    computed after every epoch, the weights of the epoch with the lowest validation loss are restored
    at the end (``restore_best``), and training stops after ``patience`` epochs without improvement
    (``None``: never stops early). The split, the shuffles and dropout all derive from ``seed``.
    """
    device = torch.device(device)
    arrays = [torch.as_tensor(t) for t in tensors]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise PoisonDetectError("fit_loop: all tensors need the same number of rows")
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise PoisonDetectError(
            f"fit_loop: need epochs >= 0, batch_size >= 1, lr > 0 (got {epochs}, {batch_size}, {lr})"
        )
    train_idx, val_idx = split_indices(n, val_fraction, seed)
    n_train, n_val = len(train_idx), len(val_idx)
    gen = torch.Generator().manual_seed(seed + 1)  # epoch shuffles
    on_device = [a.to(device) for a in arrays]  # detector data are small: keep them resident

    with seeded(seed, device):
        model.to(device)
        if any(a.dim() == 4 for a in arrays):
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        history: list[dict[str, float]] = []
        best_loss, best_state, bad_epochs = math.inf, None, 0
        n_batches = math.ceil(n_train / batch_size)
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            perm = train_idx[torch.randperm(n_train, generator=gen)].to(device)
            sums: dict[str, float] = {}
            for b in progress(range(n_batches), n_batches, f"{desc} {epoch}/{epochs}"):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                loss, metrics = _split(loss_fn(model, *(_fmt(a[idx]) for a in on_device)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _accumulate(sums, loss, metrics, len(idx))
            rec = {"epoch": float(epoch), **{k: v / n_train for k, v in sums.items()}}
            if n_val:
                rec.update(
                    {
                        f"val_{k}": v
                        for k, v in evaluate_loss(
                            model, loss_fn, on_device, val_idx, batch_size
                        ).items()
                    }
                )
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            log.info(
                "%s epoch %d/%d %s (%.2fs)",
                desc,
                epoch,
                epochs,
                " ".join(f"{k} {v:.5f}" for k, v in rec.items() if k not in ("epoch", "seconds")),
                rec["seconds"],
            )
            if n_val:
                if rec["val_loss"] < best_loss:
                    best_loss, bad_epochs = rec["val_loss"], 0
                    if restore_best:
                        best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_epochs += 1
                    if patience is not None and bad_epochs >= patience:
                        log.info(
                            "%s early stop after epoch %d (best val_loss %.5f)",
                            desc,
                            epoch,
                            best_loss,
                        )
                        break
        if best_state is not None:
            model.load_state_dict(best_state)
    model.eval()
    return history


def _fmt(t: torch.Tensor) -> torch.Tensor:
    """Images in channels-last layout: 2x faster for these few-channel convolutions on the CPU."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _split(out: LossOut) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return out if isinstance(out, tuple) else (out, {})


def _accumulate(sums: dict[str, float], loss: torch.Tensor, metrics: dict, n: int) -> None:
    sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
    for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) * n


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    loss_fn: Callable[..., LossOut],
    tensors: Sequence[torch.Tensor],
    idx: torch.Tensor,
    batch_size: int,
) -> dict[str, float]:
    """Mean loss (and metrics) of ``loss_fn`` over rows ``idx``, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    idx = idx.to(tensors[0].device)
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        loss, metrics = _split(loss_fn(model, *(_fmt(t[b]) for t in tensors)))
        _accumulate(sums, loss, metrics, len(b))
    model.train(was_training)
    return {k: v / max(len(idx), 1) for k, v in sums.items()}


@torch.no_grad()
def batched_apply(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    tensors: Sequence[np.ndarray | torch.Tensor],
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Apply ``fn(*batch)`` to consecutive batches and concatenate the outputs along axis 0.

    ``fn`` returns one tensor or a tuple of tensors; the result has the same structure as numpy.
    Put the model in eval mode before calling (dropout off).
    """
    device = torch.device(device)
    arrays = [torch.as_tensor(t) for t in tensors]
    n = len(arrays[0])
    outs: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, n, batch_size):
        res = fn(*(_fmt(a[start : start + batch_size].to(device)) for a in arrays))
        outs.append(tuple(r.cpu() for r in res) if isinstance(res, tuple) else (res.cpu(),))
    if not outs:  # empty input: run on an empty batch for the right trailing shapes
        res = fn(*(_fmt(a[:0].to(device)) for a in arrays))
        outs.append(tuple(r.cpu() for r in res) if isinstance(res, tuple) else (res.cpu(),))
    cat = tuple(torch.cat([o[i] for o in outs]).contiguous().numpy() for i in range(len(outs[0])))
    return cat if len(cat) > 1 else cat[0]
