import numpy as np
import torch

from poisondetect.classifiers import accuracy, train_model
from poisondetect.models import build_model
from poisondetect.runtime import pick_device


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
