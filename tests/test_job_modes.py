"""One job per model / detector (clusters) or one per population / cell (laptops): the same files."""

from __future__ import annotations

import copy
import re

import pytest
from conftest import TINY_CONFIG, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.workflow


def _plan(tmp_path, ml_jobs: str, sl_jobs: str):
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["model_level"]["jobs"] = ml_jobs
    cfg["sample_level"]["jobs"] = sl_jobs
    work = tmp_path / f"{ml_jobs}_{sl_jobs}"
    write_config(work, cfg)
    proc = snakemake(work, "-n")
    out = proc.stdout + proc.stderr
    files = set()
    for line in out.splitlines():
        if line.strip().startswith("output:"):
            files |= {f.strip() for f in line.split(":", 1)[1].split(",")}
    return planned_jobs(proc), files


def test_job_modes_plan_the_same_outputs(tmp_path):
    fine, fine_files = _plan(tmp_path, "per_model", "per_detector")
    coarse, coarse_files = _plan(tmp_path, "per_population", "per_cell")
    # TINY: 4 honest replicates of 1 variant, 2 replicates of 2 attacks; 2 cells x 2 train_on
    assert fine["finetune"] == 8 and "finetune_honest" not in fine
    assert coarse["finetune_honest"] == 1 and coarse["finetune_attack"] == 2
    n_det = len(TINY_CONFIG["sample_level"]["detectors"])
    assert fine["fit_filter"] == 2 * 2 * n_det and coarse["fit_filters"] == 2 * 2
    # the same result files; per detector, the shared networks are files of their own (fitted
    # once per cell by fit_network jobs), per cell they are fitted once inside the cell's job
    nets = {f for f in fine_files if "/nets/" in f}
    assert fine["fit_network"] == len(nets) == 2 * 2 * 4  # an RAE, a CAE, MagNet's two
    assert fine_files - nets == coarse_files
    assert any(re.search(r"models/flip_f50_e2_r1\.safetensors$", f) for f in fine_files)
