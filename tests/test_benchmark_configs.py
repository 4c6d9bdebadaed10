"""The benchmark scripts build configs that the workflow's schema accepts, for every preset."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

from poisondetect.config import validate_config


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["--quick", "--paper"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_model_level_benchmark_config(tmp_path, preset, optimizer, dataset):
    bench = _load("model_level_mnist")
    argv = [preset, "--optimizer", optimizer, "--dataset", dataset, "--data", str(tmp_path)]
    args = bench.parse_args(argv)
    _, s = bench.settings(args)
    cfg = validate_config(bench.build_config(args, s))
    ml = cfg["model_level"]
    assert ml["train"]["optimizer"] == optimizer
    assert ml["train"]["lr"] == bench.OPTIMIZERS[optimizer]["lr"]
    # populations: a sampled null of at least 30, at least 5 evaluated replicates of every attack
    # strength (2 %, 5 %, 50 %) on random class pairs, shadows for the combined detector
    atk = ml["attacks"]
    assert ml["finetune"]["sampled"]["replicates"] >= 30
    assert atk["replicates"] - atk["shadow_replicates"] >= 5 and atk["shadow_replicates"] >= 1
    assert atk["target_class"] == atk["attacker_class"] == "random"
    assert {"paper", "unseen"} <= set(ml["finetune"]["variants"])
    assert {0.02, 0.05, 0.5} <= set(atk["fraction"])
    if preset == "--paper":
        assert ml["attacks"]["epochs"] == [25, 50]  # the paper's epochs


def test_model_level_benchmark_default_optimizer_is_sgd(tmp_path):
    bench = _load("model_level_mnist")
    assert bench.parse_args(["--data", str(tmp_path)]).optimizer == "sgd"


@pytest.mark.parametrize("preset", ["--quick", "--paper"])
def test_sample_level_benchmark_config(tmp_path, preset):
    bench = _load("sample_level_mnist")
    args = bench.parse_args([preset, "--data", str(tmp_path)])
    _, s = bench.settings(args)
    cfg = validate_config(bench.build_config(args, s))
    assert cfg["sample_level"]["enabled"] is True
    assert set(cfg["sample_level"]["attacks"]) == {"flip", "optimal", "semi_optimal", "mixed"}
    rounds = cfg["sample_level"]["rounds"]
    assert (rounds["n_rounds"], rounds["n_detector_rounds"]) == (60, 50)  # the paper's rounds
    assert (rounds["n_train"], rounds["n_val"], rounds["n_test"]) == (100, 200, 200)
