"""Image classifiers: training and fine-tuning (the classifiers' preset of the one loop in
``fitting``), prediction and accuracy (through the one batched inference, ``fitting.batched_apply``)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from poisondetect.errors import PoisonDetectError
from poisondetect.fitting import batched_apply, train_epochs


def _augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts (reflect-padding by an eighth of the side, 4 pixels on 32x32 images, then a
    random crop) and, for colour images, a random horizontal flip (CIFAR-style; digits are not
    mirror-symmetric, so grayscale images are not flipped)."""
    n, c, h, w = xb.shape
    p = max(1, min(h, w) // 8)
    padded = nn.functional.pad(xb, (p, p, p, p), mode="reflect")
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(xb.device)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(xb.device)
    idx = torch.arange(n, device=xb.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=gen) < 0.5).to(xb.device)
    if c != 3:
        return out
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _classifier_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor):
    out = model(xb)
    return nn.functional.cross_entropy(out, yb), {
        "train_accuracy": (out.argmax(1) == yb).float().mean()
    }


def train_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    lr_milestones: tuple[float, ...] | list[float] = (),
    augment: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    desc: str = "train",
    x_eval: np.ndarray | None = None,
    y_eval: np.ndarray | None = None,
) -> list[dict]:
    """Train ``model`` in place with mini-batch SGD/Adam; return one history record per epoch.

    The classifiers' preset of the one training loop (``fitting.train_epochs``): cross-entropy,
    every row trained on (no hold-out). The learning rate is divided by 10 after each fraction of
    ``epochs`` in ``lr_milestones``. Torch, the shuffles and the augmentation draw from ``seed``.
    One log line per epoch (loss, training accuracy, and test accuracy when ``x_eval`` is given).
    """
    device = torch.device(device)
    if optimizer == "sgd":

        def make_optimizer(params):
            return torch.optim.SGD(
                params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
            )

    elif optimizer == "adam":

        def make_optimizer(params):
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    else:
        raise PoisonDetectError(f"unknown optimizer {optimizer!r} (sgd or adam)")
    evaluate = None
    if x_eval is not None:

        def evaluate(m):
            return {"test_accuracy": accuracy(m, x_eval, y_eval, device=device)}

    return train_epochs(
        model,
        _classifier_loss,
        [torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)],
        make_optimizer=make_optimizer,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        shuffle_seed=seed,
        lr_milestones=sorted({max(1, math.ceil(f * epochs)) for f in lr_milestones}),
        augment=_augment if augment else None,
        epoch_metrics=evaluate,
        device=device,
        desc=desc,
    )


def predict(
    model: nn.Module, x: np.ndarray, batch_size: int = 512, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Predicted class of every image, in batches (only one batch on the device at a time)."""
    model.to(device).eval()
    if not len(x):
        return np.zeros(0, dtype=np.int64)
    return batched_apply(
        lambda xb: model(xb).argmax(1),
        [np.asarray(x, dtype=np.float32)],
        batch_size=batch_size,
        device=device,
        channels_last=False,
    )


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, **kw) -> float:
    return float((predict(model, x, **kw) == y).mean()) if len(y) else float("nan")
