"""Partial reruns: a change reruns exactly the jobs that depend on it (issue: run where users run).

Each test dry-runs the finished tiny workflow with one config value changed and checks the exact set
of jobs Snakemake plans (from the "Job stats" table).
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import time

import psutil
import yaml
from conftest import PER_DETECTOR_CONFIG, TINY_CONFIG, planned_jobs, snakemake, snakemake_cmd

REPORT = {"collect_model_level": 1, "model_level_tables": 1, "model_level_figure": 1,
          "model_level_roc_figures": 1, "model_level_success_figure": 1, "all": 1}  # fmt: skip
AE_DETECTORS = 2  # ae_mean and ae_class read the auto-encoder's errors
# The sample level's per-detector jobs are planned on PER_DETECTOR_CONFIG's run (the tiny run has
# one job per cell and training set)
N_SL_CELLS = 2  # attacks flip, optimal at 3 poisons
N_TRAIN_ON = len(PER_DETECTOR_CONFIG["sample_level"]["train_on"])
N_DETECTORS = len(PER_DETECTOR_CONFIG["sample_level"]["detectors"])
N_NETWORKS = 4  # CAE+, RAE and CAE share an RAE and a CAE; MagNet has two RAEs; OD fits none


def _dry_run(run, tmp_path, change) -> dict[str, int]:
    """The jobs a dry run plans in the finished ``run`` with its own config changed by ``change``."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    change(cfg)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return planned_jobs(snakemake(run, "-n", configfile=path))


def test_nothing_to_do_after_a_complete_run(tiny_run, tmp_path):
    assert _dry_run(tiny_run, tmp_path, lambda c: None) == {}


def test_nothing_to_do_after_a_complete_per_detector_run(per_detector_run, tmp_path):
    assert _dry_run(per_detector_run, tmp_path, lambda c: None) == {}


def test_autoencoder_change_reruns_only_its_detectors_and_report(tiny_run, tmp_path):
    jobs = _dry_run(tiny_run, tmp_path, lambda c: c["model_level"]["autoencoder"].update(epochs=11))
    assert jobs == {
        "fit_autoencoder": 1,
        "ae_errors": 1,
        "score_detector": AE_DETECTORS,
        "calibrate": 1,
        **REPORT,
    }


def test_detector_setting_change_reruns_that_detector_only(tiny_run, tmp_path):
    def change(c):
        c["model_level"]["detectors"]["ae_class"] = {"min_spread": 1e-3}

    assert _dry_run(tiny_run, tmp_path, change) == {"score_detector": 1, "calibrate": 1, **REPORT}


def test_adding_a_detector_reruns_no_training_fine_tune_or_dump(tiny_run, tmp_path):
    jobs = _dry_run(
        tiny_run, tmp_path, lambda c: c["model_level"]["detectors"].update(mahalanobis={})
    )
    assert jobs == {"score_detector": 1, "calibrate": 1, **REPORT}


def test_calibration_change_reruns_calibration_and_report_only(tiny_run, tmp_path):
    jobs = _dry_run(tiny_run, tmp_path, lambda c: c["model_level"]["calibration"].update(fpr=0.1))
    assert jobs == {"calibrate": 1, **REPORT}


def test_summary_settings_rerun_only_the_collection_and_report(tiny_run, tmp_path):
    """The bootstrap and the interval level are read by the collection only: no calibration."""
    jobs = _dry_run(
        tiny_run, tmp_path, lambda c: c["model_level"]["calibration"].update(bootstrap=150)
    )
    # Fig. 5 draws the cell's own tables, which the collection does not touch
    assert jobs == {k: v for k, v in REPORT.items() if k != "model_level_figure"}


def test_figure_settings_rerun_only_the_report_jobs(tiny_run, tmp_path):
    jobs = _dry_run(
        tiny_run, tmp_path, lambda c: c.setdefault("report", {}).update(dpi=90, bins=20)
    )
    assert jobs == {
        "model_level_figure": 1,
        "model_level_roc_figures": 1,
        "model_level_success_figure": 1,
        "sample_level_detector_figures": 1,
        "sample_level_accuracy_figure": 1,
        "sample_level_clean_vs_contaminated": 1,
        "all": 1,
    }


def test_sample_detector_change_reruns_no_attack(per_detector_run, tmp_path):
    jobs = _dry_run(per_detector_run, tmp_path, lambda c: c["sample_level"]["cae"].update(epochs=4))
    assert "poison_rounds" not in jobs and "make_rounds" not in jobs
    assert jobs["fit_filter"] == N_SL_CELLS * N_TRAIN_ON  # only the CAE's fits
    assert jobs["fit_network"] == N_SL_CELLS * N_TRAIN_ON  # its own network: CAE+'s is another
    assert set(jobs) == {
        "fit_network",
        "fit_filter",
        "collect_sample_level",
        "analyse_filtering",  # not analyse_scores: it reads only CAE+'s scores
        "sample_level_tables",
        "sample_level_detector_figures",
        "sample_level_accuracy_figure",  # (no clean-vs-contaminated figure: one training set)
        "all",
    }


def test_a_scoring_setting_refits_no_network(per_detector_run, tmp_path):
    """CAE+'s alpha acts at scoring time: its filter jobs rerun (cheap), no network is refitted,
    no other detector's job reruns."""
    jobs = _dry_run(
        per_detector_run, tmp_path, lambda c: c["sample_level"]["cae_plus"].update(alpha=0.5)
    )
    assert "fit_network" not in jobs
    assert jobs["fit_filter"] == N_SL_CELLS * N_TRAIN_ON  # CAE+'s only
    assert "poison_rounds" not in jobs and "analyse_scores" in jobs  # Figs. 2-4 draw CAE+


def test_networks_are_fitted_once_per_cell(per_detector_run):
    """CAE+, RAE and CAE share an RAE and a CAE, MagNet has two RAEs of its own: 4 networks per
    cell and train_on, each in one file, each read by the detectors made of it."""
    cell = per_detector_run / "results/sample_level/digits_1v7/flip/p3/seed0"
    nets = sorted((cell / "nets").glob("*"))
    assert len(nets) == N_NETWORKS * N_TRAIN_ON
    assert sorted(n.name.split("-")[0] for n in nets) == ["cae", "rae", "rae", "rae"]
    # one log per job: each network's fit, each detector's
    logs = per_detector_run / "logs/sample_level/digits_1v7/flip/p3/seed0"
    for train_on in PER_DETECTOR_CONFIG["sample_level"]["train_on"]:
        for det in PER_DETECTOR_CONFIG["sample_level"]["detectors"]:
            assert (logs / f"fit_{det}_{train_on}.log").is_file(), det
    for net in nets:  # nets/{network}_{train_on}.safetensors
        assert (logs / f"fit_{net.stem}.log").is_file(), net.name


def test_attack_change_reruns_the_attack_and_its_descendants_only(per_detector_run, tmp_path):
    jobs = _dry_run(
        per_detector_run, tmp_path, lambda c: c["sample_level"]["optimal"].update(max_iter=5)
    )
    # the flipping attack does not use the optimiser's settings: only the optimal cell reruns
    assert jobs["poison_rounds"] == 1
    assert jobs["fit_filter"] == N_DETECTORS * N_TRAIN_ON  # every detector of that cell
    assert jobs["fit_network"] == N_NETWORKS * N_TRAIN_ON  # and its networks, once each
    assert "make_rounds" not in jobs and "train_genuine" not in jobs


def test_the_tiny_run_fits_each_cell_in_one_job(tiny_run, tmp_path):
    """The tiny run's sample level is one job per cell and training set (sample_level.jobs:
    per_cell): a detector's change reruns those jobs, and no attack."""
    jobs = _dry_run(tiny_run, tmp_path, lambda c: c["sample_level"]["cae"].update(epochs=4))
    assert jobs["fit_filters"] == N_SL_CELLS * len(TINY_CONFIG["sample_level"]["train_on"])
    assert not {"fit_filter", "fit_network", "poison_rounds", "make_rounds"} & set(jobs)


def test_killed_job_leaves_no_complete_looking_output_and_is_redone(tiny_run, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(tiny_run, work, symlinks=True)
    slow = copy.deepcopy(TINY_CONFIG)
    slow["model_level"]["autoencoder"]["epochs"] = 100000  # long enough to be killed mid-job
    (work / "slow.yaml").write_text(yaml.safe_dump(slow))
    cell = work / "results/model_level/digits/cnn/standard/seed0"
    log = work / "logs/model_level/digits/cnn/standard/seed0/fit_autoencoder.log"
    log.unlink()  # the copied log already has epoch lines; wait for the new job's own
    target = (cell / "autoencoder.safetensors").relative_to(work)
    cmd = snakemake_cmd(work, "--cores", "1", str(target), configfile=work / "slow.yaml")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if log.exists() and "autoencoder epoch" in log.read_text():
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the fit_autoencoder job did not start")
        # Kill the job itself (as the OOM killer or a scheduler's time limit would); Snakemake lives.
        jobs = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if any("fit_autoencoder.py" in part for part in p.cmdline())
        ]
        assert jobs, "no fit_autoencoder job process found"
        for p in jobs:
            p.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=120) != 0  # Snakemake reports the failed job and exits
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (cell / "autoencoder.safetensors").exists()
    # the next run (with the original settings) plans exactly that job and what depends on it
    jobs = planned_jobs(snakemake(work, "-n"))
    assert jobs == {
        "fit_autoencoder": 1,
        "ae_errors": 1,
        "score_detector": AE_DETECTORS,
        "calibrate": 1,
        **REPORT,
    }


def test_model_attack_change_reruns_no_honest_model_and_no_honest_score(tiny_run, tmp_path):
    jobs = _dry_run(
        tiny_run, tmp_path, lambda c: c["model_level"]["attacks"].update(pattern_size=2)
    )
    assert jobs.get("finetune_attack", 0) >= 1  # the pattern population is fine-tuned again
    assert "finetune_honest" not in jobs and "train_genuine" not in jobs
    assert "fit_autoencoder" not in jobs
