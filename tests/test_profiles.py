"""Checks of the Snakemake profiles (profiles/*/config.yaml).

Static checks run everywhere. ``test_toy_workflow_through_slurm`` (marker ``slurm``) runs a small
workflow with profiles/slurm-ci through the local one-node cluster of .ci/slurm-up.sh; it is skipped
when that cluster is not up, and fails instead when POISONDETECT_REQUIRE_SLURM=1 (.ci/run sets it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
NAMES = ["default", "slurm", "slurm-ci"]

# Options that switch on software deployment: Snakemake fails at once (even for -n) where the tool
# is missing, so the default profile (loaded by every local run and test) must not set them.
DEPLOYMENT_KEYS = {
    "software-deployment-method",
    "deployment-method",
    "deployment",
    "sdm",
    "use-apptainer",
    "use-singularity",
    "use-conda",
    "apptainer-args",
    "singularity-args",
}


def load(name: str) -> dict:
    path = PROFILES / name / "config.yaml"
    assert path.is_file(), f"missing {path}"
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


@pytest.fixture(scope="module")
def cli_options() -> set[str]:
    """Every long option of `snakemake --help` (executor plugins included), without the dashes."""
    pytest.importorskip("snakemake")
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return set(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", out))


@pytest.mark.parametrize("name", NAMES)
def test_profile_is_yaml_mapping(name):
    assert load(name)


@pytest.mark.workflow  # runs `snakemake --help`
@pytest.mark.parametrize("name", NAMES)
def test_every_key_is_a_snakemake_option(name, cli_options):
    unknown = sorted(key for key in load(name) if key.lstrip("-") not in cli_options)
    assert not unknown, f"profiles/{name}: not Snakemake options: {unknown}"


@pytest.mark.parametrize("name", NAMES)
def test_snakemake_profile_parser_accepts_it(name):
    profiles = pytest.importorskip("snakemake.profiles")
    path = PROFILES / name / "config.yaml"
    with open(path) as stream:
        parsed = profiles.ProfileConfigFileParser().parse(stream)
    assert set(parsed) <= set(load(name))


def test_default_profile_has_no_deployment_or_executor():
    prof = load("default")
    assert not DEPLOYMENT_KEYS & set(prof), "profiles/default must not switch on apptainer/conda"
    assert "executor" not in prof
    assert "apptainer" not in yaml.safe_dump(prof).lower()


@pytest.mark.parametrize("name", ["slurm", "slurm-ci"])
def test_keys_shared_with_default_agree(name):
    # profiles/default is loaded together with --profile X and overrides X's keys one by one.
    default, other = load("default"), load(name)
    for key in set(default) & set(other):
        assert default[key] == other[key], (
            f"{key}: default {default[key]!r} != {name} {other[key]!r}"
        )


def test_slurm_profile():
    prof = load("slurm")
    assert prof["executor"] == "slurm"
    assert prof["software-deployment-method"] == "apptainer"
    assert "--nv" in prof["apptainer-args"]
    res = prof["default-resources"]
    for key in ("slurm_account", "slurm_partition"):
        assert key in res, f"default-resources has no {key} placeholder"
        assert "CHANGE_ME" in str(res[key]), f"{key} should be a CHANGE_ME placeholder"
    assert int(prof["jobs"]) > 1
    assert int(prof["latency-wait"]) >= 30


def test_slurm_ci_profile():
    prof = load("slurm-ci")
    assert prof["executor"] == "slurm"
    assert prof["slurm-status-command"] == "squeue"  # no accounting database: no sacct
    assert not DEPLOYMENT_KEYS & set(prof), "the CI cluster has no apptainer"
    assert "slurm_account" not in prof["default-resources"]
    assert prof.get("slurm-no-account") is True


def _gpu_rules() -> dict[str, str]:
    """{rule name: file} of the rules in Snakefile/rules/*.smk that declare GPU resources."""
    found = {}
    files = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
    for path in files:
        if not path.is_file():
            continue
        parts = re.split(r"(?m)^[ \t]*(?:rule|checkpoint)\s+(\w+)\s*:", path.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if re.search(r"gpu_resources\(\)|\bgpu\s*=", body):
                found[name] = path.name
    return found


def test_slurm_ci_runs_every_gpu_rule_without_gpu():
    rules = _gpu_rules()
    if not rules:
        pytest.skip("no rule with GPU resources in rules/")
    overrides = load("slurm-ci").get("set-resources", {})
    for rule, file in rules.items():
        assert rule in overrides, (
            f"GPU rule {rule} ({file}) is missing from profiles/slurm-ci set-resources: "
            "add it with gpu: 0, or the GPU-less CI cluster refuses the job"
        )
        assert overrides[rule].get("gpu") == 0, rule


@pytest.mark.parametrize("name", ["slurm", "slurm-ci"])
def test_grouping_is_consistent(name):
    prof = load(name)
    groups = prof.get("groups", {})
    components = prof.get("group-components", {})
    assert set(components) <= set(groups.values()), "group-components names an unknown group"
    if groups:
        # group members run one after another: make Snakemake stack their resources
        assert prof["resources"]["group_slots"] == 1
        assert prof["set-resource-scopes"]["group_slots"] == "local"
        assert prof["default-resources"]["group_slots"] == 1
    for rule in ("score_detector", "fit_filter"):
        assert rule in groups, f"{rule} should be grouped in profiles/{name}"


# ---- runs of a toy workflow ---------------------------------------------------------------------

TOY_SNAKEFILE = textwrap.dedent(
    """
    # Stand-in for poisondetect's DAG: the same rule names, GPU resources from the same config key.
    GPU = config["resources"]["gpu_jobs"]
    MODELS = ["a", "b"]

    localrules: collect_model_level

    rule all:
        input: "detection.csv"

    rule train_genuine:
        output: "models/{m}.txt"
        resources:
            gpu=GPU["gpu"], cpus_per_gpu=GPU["cpus_per_gpu"], mem_mb=GPU["mem_mb"],
            runtime=GPU["runtime"],
        shell: "echo train {wildcards.m} ${{SLURM_JOB_ID:-local}} > {output}"

    rule fit_filter:
        input: "models/{m}.txt"
        output: "activations/{m}.txt"
        resources:
            gpu=GPU["gpu"], cpus_per_gpu=GPU["cpus_per_gpu"], mem_mb=GPU["mem_mb"],
            runtime=GPU["runtime"],
        shell: "echo dump {wildcards.m} ${{SLURM_JOB_ID:-local}} > {output}"

    rule score_detector:
        input: "activations/{m}.txt"
        output: "scores/{m}.txt"
        shell: "echo score {wildcards.m} ${{SLURM_JOB_ID:-local}} > {output}"

    rule collect_model_level:
        input: expand("scores/{m}.txt", m=MODELS)
        output: "detection.csv"
        shell: "cat {input} > {output}; echo collect ${{SLURM_JOB_ID:-local}} >> {output}"
    """
)
TOY_CONFIG = "resources:\n  gpu_jobs: {gpu: 1, cpus_per_gpu: 4, mem_mb: 16000, runtime: 120}\n"


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    pytest.importorskip("snakemake")
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    (tmp_path / "config.yaml").write_text(TOY_CONFIG)
    return tmp_path


def snakemake(workdir: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--configfile", "config.yaml", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


@pytest.mark.workflow
def test_slurm_ci_profile_dry_run(toy):
    run = snakemake(
        toy, "-n", "--profile", str(PROFILES / "slurm-ci"), "--workflow-profile", "none"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "collect_model_level" in run.stdout


@pytest.mark.workflow
def test_default_profile_dry_run(toy):
    run = snakemake(toy, "-n", "--workflow-profile", str(PROFILES / "default"))
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.workflow
@pytest.mark.slurm
def test_toy_workflow_through_slurm(slurm_cluster, toy):
    run = snakemake(
        toy,
        "--profile",
        str(PROFILES / "slurm-ci"),
        "--workflow-profile",
        "none",
        "--verbose",
        timeout=600,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    # GPU rules went in as CPU jobs: no --gpus on any sbatch line.
    sbatch = [line for line in log.splitlines() if line.startswith("sbatch call:")]
    assert sbatch, "no sbatch call logged"
    assert not [line for line in sbatch if "--gpus" in line]
    # Remote rules ran inside SLURM jobs; grouped rules share one job; the local rule ran here.
    jobs = {}
    for kind in ("models", "activations", "scores"):
        jobs[kind] = {p.read_text().split()[-1] for p in sorted((toy / kind).glob("*.txt"))}
        assert "local" not in jobs[kind], f"{kind} did not run in SLURM"
    assert len(jobs["activations"]) == 1, "the fit_filter group should be one SLURM job"
    assert len(jobs["scores"]) == 1, "the score_detector group should be one SLURM job"
    assert (toy / "detection.csv").read_text().splitlines()[-1] == "collect local"
    logs = toy / ".snakemake" / "slurm_logs"
    assert (logs / "group_filter_fit_filter").is_dir()
    assert (logs / "rule_train_genuine").is_dir()
