"""The workflow used as a Snakemake module from another directory (a user's study), from a plain
copy of the sources: no editable install involved. The jobs must import the package of the copy
they belong to, and the tiny configuration must run to its tables."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY_CONFIG

pytestmark = pytest.mark.workflow

STUDY_SNAKEFILE = """\
configfile: "config.yaml"


module poisondetect:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from poisondetect
"""


def _copy_sources(dest: Path) -> None:
    """The project's files as a user gets them (tracked and new files; nothing ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())


def test_tiny_config_runs_with_this_workflow_as_a_module(tmp_path):
    src, study = tmp_path / "poisondetect-src", tmp_path / "study"
    _copy_sources(src)
    study.mkdir()
    (study / "Snakefile").write_text(STUDY_SNAKEFILE.format(snakefile=src / "Snakefile"))
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["sample_level"]["attacks"] = ["flip"]
    assert cfg["sample_level"]["jobs"] == "per_cell"  # one job per cell and training set
    (study / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2"],
        cwd=study, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    detection = pd.read_csv(study / "results/model_level/detection.csv")
    assert set(detection["role"]) == {"genuine", "honest", "attack"}
    filtering = pd.read_csv(study / "results/sample_level/filtering.csv")
    assert set(filtering["attack"]) == {"flip"}
    assert set(filtering["detector"]) >= set(cfg["sample_level"]["detectors"])
    assert len(list((study / "logs").rglob("fit_all_*.log"))) == 2  # contaminated, clean
    # every job imported the package of the copy it belongs to, not the checkout's
    logs = list((study / "logs").rglob("*.log"))
    assert logs
    for log in logs:
        assert f"poisondetect from {src / 'poisondetect'}" in log.read_text(), log
