"""The tiny grid of both parts through SLURM (the one-node cluster of .ci/slurm-up.sh), and one
sample-level cell in the per-detector job mode (its fit_filter jobs grouped).

Asserts that the jobs went through SLURM (sbatch calls, the executor's per-job SLURM logs, the job
id seen inside the jobs) and that the results equal those of the local run of the same config.
The grid test's targets are the model level's detection table (its scoring jobs grouped) and
every filter result of one sample-level cell (one job per training set, as the tiny config runs
the sample level); the other cell is the same rules with other wildcards, and the tables and
figures are local rules SLURM never sees. The per-detector test submits the rules that mode adds
(fit_network, fit_filter in groups). Together every rule that computes something runs through
SLURM, grouped and ungrouped. Skipped where no cluster is up; fails instead when
POISONDETECT_REQUIRE_SLURM=1 (.ci/run sets it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pandas as pd
import pytest
from conftest import REPO, TINY_CONFIG, snakemake_cmd, write_config


def _through_slurm(work, targets: list[str], timeout: int) -> str:
    """Snakemake in ``work`` with profiles/slurm-ci, made to build ``targets``; its console."""
    proc = subprocess.run(
        snakemake_cmd(work, "--profile", str(REPO / "profiles/slurm-ci"), "--verbose", *targets),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


DETECTION = "results/model_level/detection.csv"
CELL = "results/sample_level/digits_1v7/flip/p3/seed0/filter"  # one cell's filter results


@pytest.mark.slurm
def test_tiny_grid_through_slurm_equals_the_local_run(slurm_cluster, tiny_run, tmp_path):
    work = tmp_path / "slurm_run"
    write_config(work, TINY_CONFIG)
    results = sorted((tiny_run / CELL).glob("*.json"))
    sl = TINY_CONFIG["sample_level"]
    assert len(results) == len(sl["detectors"]) * len(sl["train_on"])  # each fit, each training set
    targets = [DETECTION, *(str(p.relative_to(tiny_run)) for p in results)]
    t0 = time.time()
    log = _through_slurm(work, targets, timeout=1500)
    seconds = time.time() - t0
    print(
        f"tiny grid (the detection table and one sample-level cell) through SLURM: {seconds:.0f} s"
    )

    # The jobs went through SLURM: sbatch calls, one log folder per rule or group, job ids seen.
    sbatch = [line for line in log.splitlines() if line.startswith("sbatch call:")]
    assert len(sbatch) >= 5
    slurm_logs = work / ".snakemake/slurm_logs"
    submitted = {p.name for p in slurm_logs.iterdir()}
    for name in ("rule_train_genuine", "rule_prepare_data", "rule_poison_rounds"):
        assert name in submitted, submitted
    assert any(name.startswith("group_") for name in submitted)  # grouped small jobs
    genuine_log = (
        work / "logs/model_level/digits/cnn/standard/seed0/train_genuine.log"
    ).read_text()
    assert "in SLURM job" in genuine_log  # the job ran inside a SLURM allocation
    assert not [line for line in sbatch if "--gpus" in line]  # the CI cluster has no GPU

    # Same config, same seeds: the same numbers as the local run.
    local = pd.read_csv(tiny_run / DETECTION)
    remote = pd.read_csv(work / DETECTION)
    pd.testing.assert_frame_equal(local, remote)
    for path in results:
        rel = path.relative_to(tiny_run)
        assert json.loads((work / rel).read_text()) == json.loads(path.read_text()), rel


PER_DETECTOR_CELL = "results/sample_level/digits_1v7/flip/p3/seed0"


@pytest.mark.slurm
def test_per_detector_cell_through_slurm_groups_the_filters(
    slurm_cluster, per_detector_run, tmp_path
):
    """The sample level one job per detector and per shared network (what configs/paper-cae.yaml
    runs on a cluster): one cell's networks and filters through SLURM, the fit_filter jobs grouped
    (profiles/slurm-ci: 4 to a group), every file the same bytes as the local run's."""
    # a copy of the local run without the cell's networks and filter results: only the rules
    # this mode adds run again, through SLURM
    work = tmp_path / "slurm_per_detector"
    shutil.copytree(per_detector_run, work, symlinks=True)
    local = sorted(
        p
        for sub in ("filter", "nets")
        for p in (per_detector_run / PER_DETECTOR_CELL / sub).iterdir()
    )
    for sub in ("filter", "nets"):
        shutil.rmtree(work / PER_DETECTOR_CELL / sub)
    targets = [str(p.relative_to(per_detector_run)) for p in local]
    _through_slurm(work, targets, timeout=900)
    submitted = {p.name for p in (work / ".snakemake/slurm_logs").iterdir()}
    assert "rule_fit_network" in submitted, submitted
    assert "group_filter_fit_filter" in submitted, submitted  # the detectors' fits, grouped
    differ = [
        str(p.relative_to(per_detector_run))
        for p in local
        if p.read_bytes() != (work / p.relative_to(per_detector_run)).read_bytes()
    ]
    assert not differ, differ
