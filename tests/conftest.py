"""Shared fixtures: a tiny configuration of the whole workflow, run once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# Small enough to run in about a minute on 2 cores; large enough that the models learn.
TINY_CONFIG = {
    "datasets": {"digits": {"format": "digits", "max_train": 500, "max_test": 150}},
    "model_level": {
        "width": 0.25,
        "train": {"epochs": 8, "batch_size": 32, "optimizer": "adam", "lr": 0.003, "lr_milestones": [0.7]},
        "finetune": {"epochs": [2]},
        "attacks": {"epochs": [2], "pattern_size": 3, "target_class": 1, "attacker_class": 7},
        "autoencoder": {"hidden": [16], "latent": 4, "epochs": 10, "batch_size": 32},
        "threshold_finetune_epochs": 2,
    },
    "sample_level": {"enabled": False},
}


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the workflow's Snakemake in ``workdir`` (its config.yaml is the tiny config)."""
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
        "--cores", "2",
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny model-level workflow, run to completion once; tests must not modify it."""
    workdir = tmp_path_factory.mktemp("tiny_model_level")
    write_config(workdir, TINY_CONFIG)
    snakemake(workdir)
    return workdir
