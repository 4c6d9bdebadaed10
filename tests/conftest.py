"""Shared fixtures: a tiny configuration of the whole workflow, run once per test session.

The suite has tiers (markers in pyproject.toml): ``make test-quick`` deselects ``workflow``,
``packaging`` and ``slurm``; ``make test`` runs everything. A test that uses ``tiny_run`` is marked
``workflow`` here, so the quick tier never starts the tiny workflow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from poisondetect.detectors import registry

REPO = Path(__file__).resolve().parent.parent

# Small enough to run in about a minute on 2 cores; large enough that the models learn.
TINY_CONFIG = {
    "datasets": {"digits": {"format": "digits", "max_train": 500, "max_test": 150}},
    "model_level": {
        "jobs": "per_population",
        "width": 0.25,
        "train": {
            "epochs": 8,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": 0.003,
            "lr_milestones": [0.7],
        },
        # 3 fitting replicates and 1 held out: enough for the verdict to flag an extreme model
        "finetune": {"replicates": 4, "variants": {"paper": {"epochs": 2}}},
        "attacks": {
            "epochs": [2],
            "fraction": [0.5],
            "replicates": 2,
            "pattern_size": 3,
            "target_class": 1,
            "attacker_class": 7,
        },
        "autoencoder": {"hidden": [16], "latent": 4, "epochs": 10, "batch_size": 32},
        # the default verdict's trigger inversion is not among these detectors
        "calibration": {
            "bootstrap": 200,
            "fit_share": 0.75,
            "verdict": ["ae_class", "prediction_change:worst_class"],
        },
        # every detector but mahalanobis: tests/test_reruns.py adds it to a finished run
        "detectors": {
            "ae_mean": {},
            "ae_class": {},
            "activation_drift": {},
            "weight_distance": {},
            "accuracy_drop": {},
            "prediction_change": {},
        },
    },
    "sample_level": {
        "enabled": True,
        "tasks": {"digits_1v7": {"dataset": "digits", "classes": [1, 7]}},
        "run_tasks": ["digits_1v7"],
        "attacks": ["flip", "optimal"],
        "n_poison": [3],
        "rounds": {"n_rounds": 6, "n_detector_rounds": 4, "n_train": 30, "n_val": 30, "n_test": 30},
        "optimal": {"max_iter": 10},
        "detectors": registry.names("sample"),  # every registered detector
        "train_on": ["contaminated", "clean"],
        # one job per cell and training set: a job's start-up (3-6 s, torch and scikit-learn
        # imported) is most of what a tiny detector costs (the per-detector mode runs in PER_DETECTOR_CONFIG's smaller grid)
        "jobs": "per_cell",
        "autoencoders": {"batch_size": 32, "lr": 0.01},
        "cae_plus": {"rae_epochs": 3, "cae_epochs": 3},
        "cae": {"epochs": 3},
        "rae": {"epochs": 3},
        "magnet": {"epochs": 3},
        "magnet_reformer": {"epochs": 3},
    },
}


# The sample level alone, one job per detector and one per shared network (the mode clusters use):
# the detectors that share networks (CAE+, RAE and CAE: an RAE and a CAE per cell), MagNet (two RAEs
# of its own) and one that fits none (OD), on both cells, one training set. tests/test_reruns.py
# plans partial reruns on it.
PER_DETECTOR_CONFIG = {
    **TINY_CONFIG,
    "model_level": {**TINY_CONFIG["model_level"], "enabled": False},
    "sample_level": {
        **TINY_CONFIG["sample_level"],
        "jobs": "per_detector",
        "detectors": ["cae_plus", "rae", "cae", "magnet", "od"],
        "train_on": ["contaminated"],
    },
}


def snakemake_cmd(workdir: Path, *args: str, configfile: Path | None = None) -> list[str]:
    """The command line of the workflow's Snakemake in ``workdir`` (default config: its
    config.yaml); ``args`` are further options and targets (targets relative to ``workdir``)."""
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(configfile or workdir / "config.yaml"),
        *args,
    ]  # fmt: skip


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    configfile: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run the workflow's Snakemake in ``workdir`` on 2 cores and wait for it."""
    cmd = snakemake_cmd(workdir, "--cores", "2", *args, configfile=configfile)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pytest_sessionstart(session):
    """One torch thread in the test process: the tests' networks are tiny, and on a shared 2-core
    machine a second thread per process spins against the other processes (a test that takes 2 s
    alone took minutes beside a running workflow). Jobs and commands the tests start as
    subprocesses keep their own settings."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: tiny networks run faster, and the CPU is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _finished_run(tmp_path_factory, name: str, config: dict) -> Path:
    workdir = tmp_path_factory.mktemp(name)
    write_config(workdir, config)
    snakemake(workdir)
    return workdir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny workflow (both parts), run to completion once; tests must not modify it."""
    return _finished_run(tmp_path_factory, "tiny_workflow", TINY_CONFIG)


@pytest.fixture(scope="session")
def per_detector_run(tmp_path_factory) -> Path:
    """PER_DETECTOR_CONFIG run to completion once; tests must not modify it."""
    return _finished_run(tmp_path_factory, "per_detector_workflow", PER_DETECTOR_CONFIG)


def _cluster_up() -> bool:
    """Is the one-node SLURM cluster of .ci/slurm-up.sh answering?"""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        state = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(state) and state[0] in {"idle", "mix", "alloc"}


@pytest.fixture
def slurm_cluster() -> None:
    """The local SLURM cluster: the test is skipped without it, or fails where
    POISONDETECT_REQUIRE_SLURM=1 (.ci/run sets it)."""
    if not _cluster_up():
        message = "no local SLURM cluster (start it with: sudo .ci/slurm-up.sh)"
        if os.environ.get("POISONDETECT_REQUIRE_SLURM") == "1":
            pytest.fail(message + ", but POISONDETECT_REQUIRE_SLURM=1")
        pytest.skip(message)


# Fixtures that run Snakemake: a test using one of them belongs to the workflow tier.
WORKFLOW_FIXTURES = frozenset({"tiny_run", "per_detector_run"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if WORKFLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.workflow)


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The job counts of a dry run's "Job stats" table ({} when nothing is to be done)."""
    counts: dict[str, int] = {}
    lines = (proc.stdout + proc.stderr).splitlines()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


# --------------------------------------------------------------------------- fuzzing the readers

# tests/test_fuzz_readers.py: its example budget per property (POISONDETECT_FUZZ_EXAMPLES, or
# --fuzz for the longer release run) and the distinct inputs each property tried, printed at the
# end of the session.
FUZZ_ENV = "POISONDETECT_FUZZ_EXAMPLES"
FUZZ_RELEASE_EXAMPLES = 2000
FUZZ_STATS: dict[str, set[str]] = {}


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz",
        action="store_true",
        default=False,
        help=f"the release run of tests/test_fuzz_readers.py: {FUZZ_RELEASE_EXAMPLES} examples "
        f"per reader (default: the CI budget; {FUZZ_ENV}=N sets any budget)",
    )


def pytest_configure(config):
    if config.getoption("--fuzz", default=False):
        os.environ.setdefault(FUZZ_ENV, str(FUZZ_RELEASE_EXAMPLES))


def pytest_terminal_summary(terminalreporter):
    if not FUZZ_STATS:
        return
    from test_fuzz_readers import EXAMPLES, SEED_NOTE

    terminalreporter.section("fuzzed readers")
    terminalreporter.write_line(f"example budget: {EXAMPLES} per reader ({SEED_NOTE})")
    for name, seen in sorted(FUZZ_STATS.items()):
        terminalreporter.write_line(f"  {name}: {len(seen)} distinct inputs tried")
    total = sum(len(s) for s in FUZZ_STATS.values())
    terminalreporter.write_line(f"  all readers: {total} distinct inputs")
