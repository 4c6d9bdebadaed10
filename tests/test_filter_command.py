"""`poisondetect filter`: the workflow's detector classes on a user's training set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_digits

from poisondetect.__main__ import main
from poisondetect.attacks.svm import poison
from poisondetect.rounds import make_rounds
from poisondetect.sample_level.filters import fit_filter

SETTINGS = {
    "autoencoders": {"batch_size": 32, "lr": 0.01},
    "cae_plus": {"rae_epochs": 40, "cae_epochs": 40},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_round(tmp_path_factory):
    """One round of the digits 1-vs-7 task with 30 flipped-label poisons, saved for the command
    (x, y, is_poison) and as the stage's poisoned rounds (the round twice: fit on the first,
    evaluate on the second, i.e. fit and score the same training set as the command does)."""
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    r = make_rounds(x, d.target, x, d.target, classes=(1, 7), n_rounds=1, n_train=300, n_val=30,
                    n_test=30, seed=0)  # fmt: skip
    xs, ys, mask, kind = poison(
        "flip", r.x_train[0], r.y_train[0], r.x_val[0], r.y_val[0], 30, {"kernel": "linear"}, seed=0
    )
    tmp = tmp_path_factory.mktemp("filter")
    np.savez(tmp / "train.npz", x=xs, y=ys, is_poison=mask)
    two = lambda a: np.stack([a, a])  # noqa: E731
    np.savez(
        tmp / "poisoned.npz",
        x=two(xs),
        y=two(ys),
        is_poison=two(mask),
        poison_kind=two(kind),
        acc_undefended=np.ones(2),
        acc_clean=np.ones(2),
        x_test=two(r.x_test[0]),
        y_test=two(r.y_test[0]),
        x_clean=two(r.x_train[0]),
        y_clean=two(r.y_train[0]),
    )
    cfg = {"sample_level": SETTINGS}
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp


@pytest.mark.workflow
def test_filter_reproduces_the_stage_f1(digits_round, capsys):
    tmp = digits_round
    fit_filter(
        str(tmp / "poisoned.npz"),
        str(tmp / "stage.parquet"),
        str(tmp / "stage.json"),
        detector="cae_plus",
        params=SETTINGS["cae_plus"],
        shared=SETTINGS["autoencoders"],
        train_on="contaminated",
        n_detector_rounds=1,
        arch="conv",  # the digits task's detector_arch (schema default)
        svm={"kernel": "linear", "C": 1.0},
        seed=0,
        device="cpu",
        cell={
            "task": "digits_1v7",
            "attack": "flip",
            "n_poison": 6,
            "poison_rate": 0.075,
            "seed": 0,
        },
    )
    stage = next(r for r in json.loads((tmp / "stage.json").read_text()) if r["decision"] == "own")
    argv = ["filter", "--data", str(tmp / "train.npz"), "--out", str(tmp / "points.csv")]
    argv += ["--config", str(tmp / "config.yaml"), "--task", "digits_1v7", "--seed", "0"]
    assert main([*argv, "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["f1"] == pytest.approx(stage["f1"], abs=1e-12)
    assert result["f1"] > 0.5 and result["auroc"] > 0.9  # and it finds the flipped labels
    points = pd.read_csv(tmp / "points.csv")
    assert list(points.columns) == ["index", "label", "score", "re", "ce", "flagged"]
    assert len(points) == 330 and points["flagged"].sum() == result["n_flagged"]
    per_point = pd.read_parquet(tmp / "stage.parquet")
    np.testing.assert_allclose(points["score"], per_point["score"], rtol=1e-12)
    # the plain summary line
    assert main([*argv, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"cae_plus: flagged {result['n_flagged']} of 330")


def test_filter_bad_input_exits_2_with_one_line(tmp_path, capsys):
    out = str(tmp_path / "o.csv")
    assert main(["filter", "--data", str(tmp_path / "missing.npz"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data") and err.count("\n") == 1
    np.savez(tmp_path / "three.npz", x=np.zeros((6, 4), np.float32), y=np.array([0, 1, 2] * 2))
    assert main(["filter", "--data", str(tmp_path / "three.npz"), "--out", out]) == 2
    assert "exactly two classes" in capsys.readouterr().err
    np.savez(tmp_path / "nox.npz", y=np.array([0, 1]))
    assert main(["filter", "--data", str(tmp_path / "nox.npz"), "--out", out]) == 2
    assert "missing array(s) ['x']" in capsys.readouterr().err
    np.savez(tmp_path / "ok.npz", x=np.zeros((6, 4), np.float32), y=np.array([0, 1] * 3))
    args = ["filter", "--data", str(tmp_path / "ok.npz"), "--out", out]
    assert main([*args, "--detector", "nope"]) == 2
    assert "not registered" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_filter_reads_an_image_folder_and_names_its_classes(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for k, cls in enumerate(("benign", "malignant")):
            (tmp_path / "scans" / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(60 + 120 * k + 20 * rng.standard_normal((8, 8)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(
                    tmp_path / "scans" / split / cls / f"{i}.png"
                )
    out = tmp_path / "points.csv"
    argv = ["filter", "--data", str(tmp_path / "scans"), "--out", str(out), "--detector", "od"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_points"] == 12 and result["arch"] == "conv"
    points = pd.read_csv(out)
    assert sorted(points["label"].unique()) == ["benign", "malignant"]  # the folder's class names
    assert list(points.columns) == ["index", "label", "score", "flagged"]
