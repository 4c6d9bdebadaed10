import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from poisondetect.classifiers import accuracy, train_model
from poisondetect.detectors.cae import CAE
from poisondetect.detectors.nets import mlp
from poisondetect.fitting import evaluate_loss, fit_loop, split_indices
from poisondetect.models import build_model
from poisondetect.runtime import pick_device, retain_freed_memory

REPO = Path(__file__).resolve().parent.parent


def _toy(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 240)
    x = rng.normal(0, 0.1, size=(240, 1, 8, 8)).astype(np.float32)
    for c in range(3):
        x[y == c, 0, c * 2 : c * 2 + 3, :] += 0.8
    return x.clip(0, 1), y


def _run(seed):
    x, y = _toy()
    torch.manual_seed(seed)
    m = build_model("cnn", 1, 3, 8, width=0.25)
    hist = train_model(m, x, y, epochs=12, lr=0.05, batch_size=16, seed=seed, device="cpu")
    return m, hist, x, y


def test_training_learns_and_is_deterministic_on_cpu():
    m1, h1, x, y = _run(0)
    m2, h2, _, _ = _run(0)
    assert h1[-1]["loss"] < h1[0]["loss"]
    assert accuracy(m1, x, y) > 0.9
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    m3, _, _, _ = _run(1)
    assert not torch.equal(
        next(iter(m1.state_dict().values())), next(iter(m3.state_dict().values()))
    )


def test_lr_milestones_divide_the_learning_rate():
    x, y = _toy()
    m = build_model("cnn", 1, 3, 8, width=0.25)
    hist = train_model(m, x, y, epochs=4, lr=0.1, batch_size=64, lr_milestones=[0.5], seed=0)
    assert [round(r["lr"], 6) for r in hist] == [0.1, 0.01, 0.01, 0.01]


def test_pick_device_falls_back_to_cpu():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- the shared loop


def _images(n=90, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 1, 8, 8)) * (rng.random((n, 1, 8, 8)) > 0.5)).astype(np.float32)
    return x, (x[:, 0, :4].sum((1, 2)) > x[:, 0, 4:].sum((1, 2))).astype(np.int64)


def test_autoencoder_fit_same_seed_same_weights_and_history():
    """Two fits from one seed through the shared loop (channels-last images, hold-out with
    best-weight restore, a metric besides the loss) give identical weights and history."""
    x, y = _images()
    settings = dict(epochs=3, batch_size=16, lr=1e-2, val_fraction=0.3, device="cpu")
    nets, histories = [], []
    for seed in (5, 5, 6):
        cae = CAE(seed=seed, **settings).fit(x, y)
        nets.append(cae.net_.state_dict())
        histories.append([{k: v for k, v in h.items() if k != "seconds"} for h in cae.history_])
    assert all(torch.equal(a, nets[1][k]) for k, a in nets[0].items())
    assert histories[0] == histories[1] and "val_accuracy" in histories[0][0]
    assert not torch.equal(nets[0]["head.2.weight"], nets[2]["head.2.weight"])


def test_epoch_and_validation_means_are_the_per_batch_float_sums():
    """The history's loss and metric and ``evaluate_loss`` equal the per-batch means summed as
    Python floats (size-weighted), bit for bit, although the sums are kept on the device."""
    x, y = _images(70)
    seen = {True: [], False: []}  # model.training -> (loss, accuracy, batch size) per batch

    def loss_fn(m, xb, yb):
        out = m(xb.flatten(1))
        loss = torch.nn.functional.cross_entropy(out, yb)
        acc = (out.argmax(1) == yb).float().mean()
        seen[m.training].append((float(loss.detach()), float(acc), len(yb)))
        return loss, {"accuracy": acc}

    def weighted(rows, col):
        total = 0.0
        for r in rows:
            total = total + r[col] * r[2]
        return total / sum(r[2] for r in rows)

    torch.manual_seed(0)
    net = mlp([64, 16, 2], "relu")
    hist = fit_loop(net, loss_fn, [x, y], seed=0, batch_size=16, epochs=1, val_fraction=0.3)
    assert len(seen[True]) == 4 and len(seen[False]) == 2  # 49 training rows, 21 held out
    assert hist[0]["loss"] == weighted(seen[True], 0)
    assert hist[0]["accuracy"] == weighted(seen[True], 1)
    assert hist[0]["val_loss"] == weighted(seen[False], 0)
    assert hist[0]["val_accuracy"] == weighted(seen[False], 1)
    seen[False].clear()
    _, val_idx = split_indices(len(x), 0.3, 0)
    again = evaluate_loss(net, loss_fn, [x, y], val_idx, 8)
    assert again["loss"] == weighted(seen[False], 0) and len(seen[False]) == 3


_FAULTS_PER_EPOCH = """
import resource, sys
import numpy as np, torch
import torch.nn.functional as F
import poisondetect.runtime as runtime
from poisondetect.detectors.nets import build_autoencoder
from poisondetect.fitting import train_epochs
torch.set_num_threads(1)
if sys.argv[1] == "off":
    runtime._allocator_tuned = False  # as if already tried: glibc's defaults stay
x = np.random.default_rng(0).random((768, 1, 28, 28), dtype=np.float32)
faults = lambda m: {"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}
h = train_epochs(
    build_autoencoder("conv", (1, 28, 28)), lambda m, a, b: F.mse_loss(m(a), b), [x, x],
    make_optimizer=torch.optim.Adam, epochs=6, batch_size=256, seed=0, shuffle_seed=1,
    channels_last=True, epoch_metrics=faults,
)
print(h[-1]["faults"] - h[1]["faults"])  # epochs 3-6, after the first two have warmed up
"""


@pytest.mark.workflow
def test_training_reuses_freed_memory_instead_of_faulting_new_pages():
    """In a fresh process (as a workflow job), training steps of the paper's auto-encoder (batch
    256 of 28x28 images) fault in thousands of new pages per epoch with glibc's defaults, and
    (nearly) none once the loop has called ``retain_freed_memory``."""
    if not retain_freed_memory():
        pytest.skip("the C library has no mallopt (not glibc)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    faults = {}
    for mode in ("off", "on"):
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_PER_EPOCH, mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        faults[mode] = int(out.stdout.split()[-1])
    if faults["off"] < 1000:
        pytest.skip(f"this C library does not fault with its defaults here ({faults})")
    assert faults["on"] < 0.2 * faults["off"], faults  # measured: about 0-1,200 vs 15,000-30,000
