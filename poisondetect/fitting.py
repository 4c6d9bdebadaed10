"""The one seeded training loop (classifiers and auto-encoders alike) and batched inference.

- ``seeded``: torch seeded inside a block (the caller's RNG state restored afterwards).
- ``train_epochs``: the loop itself: seeded shuffles, a loss function ``loss_fn(model, *batch)``,
  any optimizer / scheduler, optional augmentation, optional hold-out with best-weight restore and
  early stopping, one history record and one log line per epoch, a tqdm bar only on a terminal.
  Its cost is the network's kernels: batches are gathered on the device, the loss sums stay there
  (one host sync per epoch), freed memory is reused (``runtime.retain_freed_memory``); see
  ``benchmarks/ae_fit_profile.py`` for where an epoch's time goes.
- ``fit_loop``: the auto-encoders' preset (Adam, seeded hold-out split); ``classifiers.train_model`` is
  the classifiers' preset (SGD / Adam, step schedule, augmentation) of the same loop.
- ``iter_batches`` / ``batched_apply``: the one batched inference (per batch, or concatenated as
  numpy); classifiers' ``predict``, the auto-encoders' scores and the activation dumps use it.
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
from poisondetect.runtime import deterministic_cuda, progress, retain_freed_memory

log = logging.getLogger(__name__)

LossOut = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed torch (CPU and the given CUDA device) inside the block, restoring the caller's RNG state
    afterwards; deterministic algorithms are asked for on CUDA (see runtime.deterministic_cuda)."""
    device = torch.device(device)
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


def train_epochs(
    model: nn.Module,
    loss_fn: Callable[..., LossOut],
    tensors: Sequence[np.ndarray | torch.Tensor],
    *,
    make_optimizer: Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer],
    epochs: int,
    batch_size: int,
    seed: int,
    shuffle_seed: int,
    train_idx: torch.Tensor | None = None,
    val_idx: torch.Tensor | None = None,
    lr_milestones: Sequence[int] = (),
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    patience: int | None = None,
    restore_best: bool = True,
    channels_last: bool = False,
    epoch_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
    device: torch.device | str = "cpu",
    desc: str = "fit",
) -> list[dict[str, float]]:
    """Train ``model`` in place; return one history record per epoch.

    ``loss_fn(model, *batch)`` returns the mean loss of the batch, or ``(loss, metrics)`` where
    ``metrics`` maps names to batch means (kept in the history, e.g. accuracy). Torch is seeded with
    ``seed`` for the whole run (dropout; the caller's RNG state is restored); the epoch shuffles of
    ``train_idx`` (default: every row) and ``augment(first_tensor_batch, generator)`` draw from a
    generator seeded with ``shuffle_seed``. The learning rate is divided by 10 at each epoch of
    ``lr_milestones``. With ``val_idx`` the loss on those rows is computed after every epoch (eval
    mode), the lowest-loss weights are restored at the end (``restore_best``) and training stops after
    ``patience`` epochs without improvement (``None``: never early). ``epoch_metrics(model)`` adds
    entries to each record (e.g. test accuracy).

    (One function on purpose: it is the only training loop of the package, and its steps share the
    seeded state, the sums kept on the device and the best weights; split, they would pass all of
    it around.)
    """
    device = torch.device(device)
    retain_freed_memory()  # every batch's tensors reuse freed memory instead of new pages
    arrays = [torch.as_tensor(t) for t in tensors]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise PoisonDetectError(f"{desc}: all tensors need the same number of rows")
    if epochs < 0 or batch_size < 1:
        raise PoisonDetectError(
            f"{desc}: need epochs >= 0 and batch_size >= 1 (got {epochs}, {batch_size})"
        )
    train_idx = torch.arange(n) if train_idx is None else train_idx
    val_idx = torch.arange(0) if val_idx is None else val_idx
    n_train, n_val = len(train_idx), len(val_idx)
    gen = torch.Generator().manual_seed(shuffle_seed)
    on_device = [a.to(device) for a in arrays]  # one upload; batches are indexed on the device
    fmt = _channels_last if channels_last else (lambda t: t)

    with seeded(seed, device):
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model.parameters())
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(lr_milestones), gamma=0.1)
        history: list[dict[str, float]] = []
        best_loss, best_state, bad_epochs = math.inf, None, 0
        n_batches = math.ceil(n_train / batch_size)
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            perm = train_idx[torch.randperm(n_train, generator=gen)].to(device)
            sums: dict[str, torch.Tensor] = {}
            for b in progress(range(n_batches), n_batches, f"{desc} {epoch}/{epochs}"):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                batch = [fmt(a.index_select(0, idx)) for a in on_device]  # 3x faster than a[idx]
                if augment is not None:
                    batch[0] = augment(batch[0], gen)
                loss, metrics = _split(loss_fn(model, *batch))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _accumulate(sums, loss, metrics, len(idx))
            sched.step()
            rec = {"epoch": epoch, **{k: float(v) / max(n_train, 1) for k, v in sums.items()}}
            rec["lr"] = opt.param_groups[0]["lr"]
            if n_val:
                val = evaluate_loss(model, loss_fn, on_device, val_idx, batch_size, fmt)
                rec.update({f"val_{k}": v for k, v in val.items()})
            if epoch_metrics is not None:
                rec.update(epoch_metrics(model))
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            log.info(
                "%s epoch %d/%d %s (%.2fs)",
                desc,
                epoch,
                epochs,
                " ".join(
                    f"{k} {v:.5f}" for k, v in rec.items() if k not in ("epoch", "seconds", "lr")
                ),
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
    return history


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
    """The auto-encoders' preset of ``train_epochs``: Adam at ``lr``; a seeded random share
    ``val_fraction`` of the rows held out (best weights restored, early stopping after
    ``patience``); images in channels-last layout. The split, the shuffles (``seed + 1``) and dropout
    all derive from ``seed``. Leaves the model in eval mode."""
    if lr <= 0:
        raise PoisonDetectError(f"{desc}: need lr > 0, got {lr}")
    n = len(tensors[0])
    train_idx, val_idx = split_indices(n, val_fraction, seed)
    history = train_epochs(
        model,
        loss_fn,
        tensors,
        make_optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        shuffle_seed=seed + 1,
        train_idx=train_idx,
        val_idx=val_idx,
        patience=patience,
        restore_best=restore_best,
        channels_last=any(np.ndim(t) == 4 for t in tensors),
        device=device,
        desc=desc,
    )
    model.eval()
    return history


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """Images in channels-last layout: 2x faster for these few-channel convolutions on the CPU."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _split(out: LossOut) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return out if isinstance(out, tuple) else (out, {})


def _accumulate(sums: dict, loss: torch.Tensor, metrics: dict, n: int) -> None:
    """Add ``n`` times the batch means to ``sums``, in float64 on the loss's device: no host sync
    per batch (the caller reads the sums once), the same numbers as summing Python floats."""
    for k, v in (("loss", loss), *metrics.items()):
        v = v.detach().to(torch.float64) if torch.is_tensor(v) else float(v)
        sums[k] = sums.get(k, 0.0) + v * n


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    loss_fn: Callable[..., LossOut],
    tensors: Sequence[torch.Tensor],
    idx: torch.Tensor,
    batch_size: int,
    fmt: Callable[[torch.Tensor], torch.Tensor] = _channels_last,
) -> dict[str, float]:
    """Mean loss (and metrics) of ``loss_fn`` over rows ``idx``, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    tensors = [torch.as_tensor(t) for t in tensors]
    idx = idx.to(tensors[0].device)
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        loss, metrics = _split(loss_fn(model, *(fmt(t.index_select(0, b)) for t in tensors)))
        _accumulate(sums, loss, metrics, len(b))
    model.train(was_training)
    return {k: float(v) / max(len(idx), 1) for k, v in sums.items()}


def iter_batches(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    tensors: Sequence[np.ndarray | torch.Tensor],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
    """The one batched inference: ``fn(*batch)`` on consecutive batches of rows of ``tensors``
    (only one batch on ``device`` at a time), without gradients; yields ``(start_row, outputs on
    the CPU)``, ``outputs`` a tuple of tensors. Put the model in eval mode first (dropout off).
    ``channels_last`` passes image batches in channels-last layout (as the training loop does)."""
    if batch_size < 1:
        raise PoisonDetectError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    retain_freed_memory()  # each batch's outputs reuse freed memory instead of new pages
    arrays = [torch.as_tensor(t) for t in tensors]
    layout = _channels_last if channels_last else (lambda t: t)
    for start in range(0, len(arrays[0]), batch_size):
        with torch.inference_mode():
            res = fn(*(layout(a[start : start + batch_size].to(device)) for a in arrays))
        yield start, tuple(r.cpu() for r in res) if isinstance(res, tuple) else (res.cpu(),)


def batched_apply(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    tensors: Sequence[np.ndarray | torch.Tensor],
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """``iter_batches`` with the outputs concatenated along axis 0, as numpy (one array, or a tuple
    when ``fn`` returns a tuple). ``channels_last`` defaults to the training loop's layout."""
    kw = dict(batch_size=batch_size, device=device, channels_last=channels_last)
    outs = [out for _, out in iter_batches(fn, tensors, **kw)]
    if not outs:  # empty input: run on an empty batch for the right trailing shapes
        outs = [_empty_outputs(fn, tensors, device=device, channels_last=channels_last)]
    cat = tuple(torch.cat([o[i] for o in outs]).contiguous().numpy() for i in range(len(outs[0])))
    return cat if len(cat) > 1 else cat[0]


def _empty_outputs(fn, tensors, *, device, channels_last) -> tuple[torch.Tensor, ...]:
    layout = _channels_last if channels_last else (lambda t: t)
    with torch.inference_mode():
        res = fn(*(layout(torch.as_tensor(t)[:0].to(device)) for t in tensors))
    return tuple(r.cpu() for r in res) if isinstance(res, tuple) else (res.cpu(),)
