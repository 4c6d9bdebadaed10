"""The tiny grid of both parts through SLURM (the one-node cluster of .ci/slurm-up.sh).

Asserts that the jobs went through SLURM (sbatch calls, the executor's per-job SLURM logs, the job
id seen inside the jobs) and that the results equal those of the local run of the same config.
Skipped where no cluster is up; fails instead when POISONDETECT_REQUIRE_SLURM=1 (.ci/run sets it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pandas as pd
import pytest
from conftest import REPO, TINY_CONFIG, snakemake_cmd, write_config


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(out.stdout.split()) and out.stdout.split()[0] in {"idle", "mix", "alloc"}


@pytest.mark.slurm
def test_tiny_grid_through_slurm_equals_the_local_run(tiny_run, tmp_path):
    if not _cluster_up():
        message = "no local SLURM cluster (start it with: sudo .ci/slurm-up.sh)"
        if os.environ.get("POISONDETECT_REQUIRE_SLURM") == "1":
            pytest.fail(message + ", but POISONDETECT_REQUIRE_SLURM=1")
        pytest.skip(message)
    work = tmp_path / "slurm_run"
    write_config(work, TINY_CONFIG)
    t0 = time.time()
    proc = subprocess.run(
        snakemake_cmd(work, "--profile", str(REPO / "profiles/slurm-ci"), "--verbose"),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    seconds = time.time() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    print(f"tiny grid through SLURM: {seconds:.0f} s")

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
    for table in ("model_level/detection.csv", "sample_level/filtering.csv"):
        local = pd.read_csv(tiny_run / "results" / table)
        remote = pd.read_csv(work / "results" / table)
        pd.testing.assert_frame_equal(
            local.drop(columns=["fit_seconds"], errors="ignore"),
            remote.drop(columns=["fit_seconds"], errors="ignore"),
        )
