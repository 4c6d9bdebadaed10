"""The model-level workflow end to end through Snakemake, and the audit command on its output."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pandas as pd
import torch
from conftest import REPO, TINY_CONFIG

CELL = "results/model_level/digits/cnn/standard/seed0"


def _models():
    ml = TINY_CONFIG["model_level"]
    return (
        ["genuine"]
        + [f"finetune_e{e}" for e in ml["finetune"]["epochs"]]
        + [f"{k}_e{e}" for k in ("flip", "pattern") for e in ml["attacks"]["epochs"]]
    )


def test_detection_table_has_one_row_per_grid_cell(tiny_run):
    df = pd.read_csv(tiny_run / "results/model_level/detection.csv")
    assert sorted(df["model"]) == sorted(_models())
    for col in [
        "dataset",
        "arch",
        "variant",
        "epochs",
        "seed",
        "accuracy",
        "attack_success",
        "mean_error",
        "threshold",
        "flagged",
    ]:
        assert col in df.columns
    assert (df["threshold"] == df["threshold"].iloc[0]).all()
    assert (df["flagged"] == (df["mean_error"] > df["threshold"])).all()
    honest = df[df["variant"] == "finetune"].iloc[0]
    assert not honest["flagged"]  # mean error below mean + std of its own errors, by construction
    assert df["accuracy"].min() > 0.5  # the tiny models did learn
    attacks = df[df["variant"].isin(["flip", "pattern"])]
    assert attacks["attack_success"].between(0, 1).all()


def test_tables_figures_and_logs_exist(tiny_run):
    ml = tiny_run / "results/model_level"
    for name in ["table1_accuracy", "table2_attack_success", "table3_detection"]:
        assert (ml / f"{name}.csv").stat().st_size > 0
        tex = (ml / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\bottomrule" in tex
    for ext in ("png", "pdf"):
        assert (ml / f"figures/fig5_digits_cnn_standard_seed0.{ext}").stat().st_size > 1000
    t1 = pd.read_csv(ml / "table1_accuracy.csv")
    assert {"Genuine", "Fine-tuned 2", "FA 2", "PAA 2"} <= set(t1.columns)
    assert (tiny_run / "logs/model_level/digits/cnn/standard/seed0/train_genuine.log").read_text()


def test_parquet_dump_carries_model_metadata(tiny_run):
    from poisondetect.activations import read_activations

    acts = read_activations(tiny_run / CELL / "activations/flip_e2.parquet")
    assert acts.metadata["model"] == "flip_e2" and acts.metadata["arch"] == "cnn"
    assert acts.activations.shape == (150, 128)  # 512 FC units of the paper's CNN at width 0.25
    assert acts.metadata["checkpoint"]["width"] == 0.25


def _audit(run, model, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "poisondetect",
            "audit",
            "--bundle",
            str(run / CELL / "detector.safetensors"),
            "--model",
            str(model),
            "--data",
            str(run / "results/data/digits.npz"),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_audit_reproduces_the_workflow_verdict(tiny_run):
    df = pd.read_csv(tiny_run / "results/model_level/detection.csv").set_index("model")
    for model in ("finetune_e2", "flip_e2"):
        proc = _audit(tiny_run, tiny_run / CELL / f"models/{model}.safetensors")
        flagged = bool(df.loc[model, "flagged"])
        assert proc.returncode == (1 if flagged else 0), proc.stderr
        assert ("POISONED" if flagged else "not poisoned") in proc.stdout
        assert f"{df.loc[model, 'mean_error']:.6g}" in proc.stdout


def test_audit_accepts_a_weights_only_state_dict(tiny_run, tmp_path):
    from safetensors.torch import load_file

    sd = load_file(tiny_run / CELL / "models/finetune_e2.safetensors")
    torch.save(sd, tmp_path / "plain.pt")
    proc = _audit(tiny_run, tmp_path / "plain.pt")
    assert proc.returncode in (0, 1), proc.stderr
    assert "trigger images" in proc.stdout


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_audit_refuses_a_pickled_checkpoint_that_carries_code(tiny_run, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Payload(str(marker))}, f)
    proc = _audit(tiny_run, evil)
    assert proc.returncode == 2
    assert "refusing to unpickle" in proc.stderr
    assert not marker.exists()


def test_audit_refuses_the_wrong_trigger_data(tiny_run, tmp_path):
    import numpy as np

    data = np.load(tiny_run / "results/data/digits.npz")
    arrays = {k: data[k] for k in data.files}
    arrays["x_test"] = arrays["x_test"].copy()
    arrays["x_test"][0] = 0
    np.savez(tmp_path / "other.npz", **arrays)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "poisondetect",
            "audit",
            "--bundle",
            str(tiny_run / CELL / "detector.safetensors"),
            "--model",
            str(tiny_run / CELL / "models/genuine.safetensors"),
            "--data",
            str(tmp_path / "other.npz"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "does not hold the trigger set" in proc.stderr
