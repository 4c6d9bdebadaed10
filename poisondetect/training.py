"""Seeded training / fine-tuning loops and evaluation of image classifiers."""

from __future__ import annotations

import logging
import math
import random
import time

import numpy as np
import torch
from torch import nn

from poisondetect.runtime import deterministic_cuda, progress

log = logging.getLogger(__name__)


def seed_everything(seed: int, device: torch.device | str | None = None) -> None:
    """Same seed, same numbers on the CPU (and deterministic kernels on CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device is not None and torch.device(device).type == "cuda":
        deterministic_cuda()


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

    The learning rate is divided by 10 after each fraction of ``epochs`` in ``lr_milestones``.
    Shuffling and augmentation draw from a generator seeded with ``seed``. One log line per epoch
    (loss, training accuracy, and test accuracy when ``x_eval`` is given).
    """
    device = torch.device(device)
    seed_everything(seed, device)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    if device.type == "cuda":  # keep the whole training set on the GPU: no loader overhead
        xt, yt = xt.to(device), yt.to(device)
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(),
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=momentum > 0,
        )
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r} (sgd or adam)")
    milestones = sorted({max(1, math.ceil(f * epochs)) for f in lr_milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    n = len(xt)
    n_batches = math.ceil(n / batch_size)
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        total_loss, correct = 0.0, 0
        for b in progress(range(n_batches), n_batches, f"{desc} {epoch}/{epochs}"):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            xb = xt[idx.to(xt.device)].to(device, non_blocking=True)
            yb = yt[idx.to(yt.device)].to(device, non_blocking=True)
            if augment:
                xb = _augment(xb, gen)
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        sched.step()
        rec = {
            "epoch": epoch,
            "loss": total_loss / n,
            "train_accuracy": correct / n,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        msg = f"{desc} epoch {epoch}/{epochs} loss {rec['loss']:.4f} train acc {rec['train_accuracy']:.4f}"
        if x_eval is not None:
            rec["test_accuracy"] = accuracy(model, x_eval, y_eval, device=device)
            msg += f" test acc {rec['test_accuracy']:.4f}"
        log.info("%s (%.1fs)", msg, rec["seconds"])
        history.append(rec)
    return history


@torch.inference_mode()
def predict(
    model: nn.Module, x: np.ndarray, batch_size: int = 512, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Predicted class of every image, in batches (only one batch on the device at a time)."""
    device = torch.device(device)
    model.to(device).eval()
    preds = []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=device)
        preds.append(model(xb).argmax(1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, **kw) -> float:
    return float((predict(model, x, **kw) == y).mean()) if len(y) else float("nan")
