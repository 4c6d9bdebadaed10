"""The benchmark scripts build configs that the workflow's schema accepts, for every preset."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import REPO

from poisondetect.config import validate_config
from poisondetect.detectors import registry


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
    assert atk["sampled"] is True  # attackers train like honest users (issue 23)
    if preset == "--paper":
        assert ml["attacks"]["epochs"] == [25, 50]  # the paper's epochs


def test_model_level_calibration_preset_sizes_the_null_for_the_verdict(tmp_path):
    from poisondetect import population
    from poisondetect.metrics import guaranteed_fpr

    bench = _load("model_level_mnist")
    args = bench.parse_args(["--quick", "--calibration", "--data", str(tmp_path)])
    _, s = bench.settings(args)
    ml = validate_config(bench.build_config(args, s))["model_level"]
    fit = population.n_fit_honest(ml, "new_data")
    held = (
        sum(population.honest_replicates(ml, v) for v in population.honest_variants(ml, "new_data"))
        - fit
    )
    assert guaranteed_fpr(fit, 0.05) <= 0.05 and fit >= population.calibration_needs(ml)
    assert held >= 40  # the false-alarm rate measured on at least 40 held-out honest models
    assert population.calibration_warning(ml) is None


@pytest.mark.parametrize("preset", ["--quick", "--paper"])
def test_model_level_benchmark_families_config(tmp_path, preset):
    """--families: every registered attack kind, with its strength settings, the attackers'
    recipes drawn as the sampled null's; without it the attackers' recipes are sampled too
    unless --attacker-recipe fixed."""
    from poisondetect.attacks import registry as attacks

    bench = _load("model_level_mnist")
    args = bench.parse_args([preset, "--families", "--data", str(tmp_path)])
    _, s = bench.settings(args)
    atk = validate_config(bench.build_config(args, s))["model_level"]["attacks"]
    assert atk["kinds"] == attacks.names() and atk["sampled"] is True
    assert atk["fraction"] == bench.FAMILIES["fractions"]
    for key, value in bench.FAMILIES["strengths"].items():
        assert atk[key] == value
    assert set(bench.FAMILIES["strengths"]) <= attacks.setting_keys()
    assert atk["replicates"] - atk["shadow_replicates"] >= 5 and atk["shadow_replicates"] >= 1
    args = bench.parse_args([preset, "--attacker-recipe", "fixed", "--data", str(tmp_path)])
    atk = validate_config(bench.build_config(args, bench.settings(args)[1]))["model_level"][
        "attacks"
    ]
    assert atk["sampled"] is False and atk["kinds"] == ["flip", "pattern"]


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
    # the paper's six detectors at the paper's 10 % by default; --sweep to 30 %, --detectors all
    assert cfg["sample_level"]["n_poison"] == [10]
    assert cfg["sample_level"]["detectors"] == bench.PAPER_DETECTORS
    args = bench.parse_args([preset, "--sweep", "--detectors", "all", "--data", str(tmp_path)])
    cfg = validate_config(bench.build_config(args, bench.settings(args)[1]))
    assert cfg["sample_level"]["n_poison"] == [0, 5, 10, 20, 30]
    assert cfg["sample_level"]["detectors"] == registry.names("sample")


def test_fit_profile_extrapolates_steady_epochs_and_counts_setup_once():
    """ae_fit_profile: an epoch's seconds are those after the first (which also pays one-time
    costs); a paper-length fit is the steady epochs times the paper's epochs plus what the
    measured fit spent besides them."""
    bench = _load("ae_fit_profile")
    net = {"epochs": 3, "epoch_wall": [2.0, 1.0, 1.0], "epoch_cpu": [1.5, 0.5, 0.5]}
    assert bench.per_epoch(net) == {"epoch_s": 1.0, "cpu_s": 0.5}
    res = {"detectors": {"rae": {"fit_s": 5.0, "fit_cpu_s": 3.0, "networks": [net]}}}
    assert bench.fit_estimate(res, "wall")["rae"] == 300 * 1.0 + (5.0 - 3 * 1.0)
    assert bench.fit_estimate(res, "cpu")["rae"] == 300 * 0.5 + (3.0 - 3 * 0.5)
    with pytest.raises(SystemExit):
        bench.parse_args(["--detectors", "rae,od"])


def test_model_level_benchmark_report_only_runs_no_workflow(tmp_path, monkeypatch):
    """--report-only reports what the work directory holds: it refuses one without results,
    and otherwise neither runs Snakemake nor deletes the results there."""
    bench = _load("model_level_mnist")
    argv = ["--quick", "--data", str(tmp_path / "absent"), "--report-only"]
    with pytest.raises(SystemExit, match="--report-only: .* holds no results"):
        bench.main([*argv, "--workdir", str(tmp_path / "empty")])
    work = tmp_path / "work"
    (work / "results" / "model_level").mkdir(parents=True)
    kept = work / "results" / "kept.txt"
    kept.write_text("an earlier run's")
    shared = sys.modules[bench.start_benchmark.__module__]
    monkeypatch.setattr(shared, "run_workflow", lambda *a, **k: pytest.fail("ran the workflow"))
    with pytest.raises(FileNotFoundError, match="roc.csv"):  # the report reads the results
        bench.main([*argv, "--workdir", str(work)])
    assert kept.read_text() == "an earlier run's"
