"""Every job reports its device at start; a GPU job that cannot use CUDA stops instead of training
on the CPU for hours. The scheduler's GPU variables are faked on this GPU-less machine."""

from __future__ import annotations

import copy
import errno
import logging
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_CONFIG, snakemake, write_config

from poisondetect.logs import run_logged
from poisondetect.runtime import GPU_ENV_VARS, device_report, pick_device, scheduler_gpus

needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="fakes a GPU job that cannot use CUDA: needs a machine without",
)


@pytest.fixture
def no_gpu_env(monkeypatch):
    for var in GPU_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_scheduler_gpu_variables(no_gpu_env):
    assert scheduler_gpus({}) == {}
    assert scheduler_gpus({"CUDA_VISIBLE_DEVICES": "0"}) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert scheduler_gpus({"SLURM_JOB_GPUS": "2,3", "SLURM_GPUS_ON_NODE": "2"}) == {
        "SLURM_JOB_GPUS": "2,3",
        "SLURM_GPUS_ON_NODE": "2",
    }
    # no device: hidden GPUs, a count of zero, a TRES without GPUs
    for env in (
        {"CUDA_VISIBLE_DEVICES": ""},
        {"CUDA_VISIBLE_DEVICES": "-1"},
        {"CUDA_VISIBLE_DEVICES": "NoDevFiles"},
        {"SLURM_GPUS_ON_NODE": "0"},
        {"SLURM_TRES_PER_TASK": "cpu:4"},
    ):
        assert scheduler_gpus(env) == {}, env


@needs_no_cuda
@pytest.mark.parametrize(
    "fake", [{"CUDA_VISIBLE_DEVICES": "0"}, {"SLURM_JOB_GPUS": "1", "SLURM_GPUS_ON_NODE": "1"}]
)
def test_gpu_job_without_cuda_stops_unless_cpu_is_asked_for(no_gpu_env, fake):
    from poisondetect.errors import PoisonDetectError

    assert pick_device("auto").type == "cpu"  # a laptop: no GPU given, none used
    for k, v in fake.items():
        no_gpu_env.setenv(k, v)
    for requested in ("auto", "cuda"):
        with pytest.raises(PoisonDetectError) as e:
            pick_device(requested)
        msg = str(e.value)
        assert "given a GPU" in msg and f"{next(iter(fake))}=" in msg
        assert "driver" in msg or "CPU-only build" in msg
        assert "--nv" in msg and "device: cpu" in msg and "\n" not in msg
    assert pick_device("cpu").type == "cpu"  # explicitly allowed


def test_cpu_job_report_does_not_import_torch():
    code = (
        "import sys; from poisondetect.runtime import device_report; "
        "print(device_report(None)); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.splitlines()
    assert out[0].startswith("device: cpu (CPU job); torch ")
    assert out[1] == "False"


def test_device_job_report_names_versions_and_gpus(no_gpu_env):
    line = device_report("auto")
    assert f"torch {torch.__version__}" in line
    assert "built for CUDA" in line and "GPUs seen:" in line and "scheduler GPU variables" in line


def _job(log_file, *, device=None, raises=None):
    calls = []

    def stage(**kwargs):
        calls.append(kwargs)
        if raises is not None:
            raise raises
        return "done"

    kwargs = {} if device is None else {"device": device}
    try:
        return run_logged([str(log_file)], stage, **kwargs), calls
    finally:
        logging.getLogger().handlers.clear()


def test_every_job_logs_its_device_at_start(tmp_path, no_gpu_env):
    result, calls = _job(tmp_path / "gpu.log", device="auto")
    assert result == "done" and calls
    text = (tmp_path / "gpu.log").read_text()
    assert f"device: {pick_device('auto')} (requested auto); torch {torch.__version__}" in text
    _job(tmp_path / "cpu.log")
    assert "device: cpu (CPU job)" in (tmp_path / "cpu.log").read_text()


@needs_no_cuda
def test_faked_gpu_job_fails_before_its_stage_runs(tmp_path, no_gpu_env):
    no_gpu_env.setenv("SLURM_GPUS_ON_NODE", "1")
    no_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(SystemExit) as e:
        _job(tmp_path / "job.log", device="auto")
    assert e.value.code == 2  # a set-up the user can fix: one line, the bad-input status
    text = (tmp_path / "job.log").read_text()
    assert "ERROR" in text and "given a GPU" in text
    # device: cpu is the explicit way to run it on the CPU
    result, calls = _job(tmp_path / "cpu.log", device="cpu")
    assert result == "done" and calls


def test_full_disk_is_one_line_not_a_traceback(tmp_path, no_gpu_env):
    full = OSError(errno.ENOSPC, "No space left on device", "results/data/x.npz")
    with pytest.raises(SystemExit) as e:
        _job(tmp_path / "job.log", raises=full)
    assert e.value.code == 2
    text = (tmp_path / "job.log").read_text()
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in text
    assert "no space left on the device while writing results/data/x.npz" in errors[0]
    denied = OSError(errno.EACCES, "Permission denied", "results/x")
    with pytest.raises(SystemExit) as e:
        _job(tmp_path / "denied.log", raises=denied)
    assert e.value.code == 2
    assert "results/x: permission denied" in (tmp_path / "denied.log").read_text()
    bug = KeyError("x")  # anything else is an internal error: status 1, with its traceback
    with pytest.raises(SystemExit) as e:
        _job(tmp_path / "other.log", raises=bug)
    assert e.value.code == 1
    assert "Traceback" in (tmp_path / "other.log").read_text()


@needs_no_cuda
@pytest.mark.parametrize(
    "part, target, log",
    [
        (
            "model_level",
            "results/model_level/digits/cnn/standard/seed0/models/genuine.safetensors",
            "logs/model_level/digits/cnn/standard/seed0/train_genuine.log",
        ),
        (
            "sample_level",
            "results/sample_level/digits_1v7/flip/p3/seed0/filter/od_contaminated.json",
            "logs/sample_level/digits_1v7/flip/p3/seed0/fit_all_contaminated.log",
        ),
    ],
)
@pytest.mark.workflow
def test_workflow_gpu_job_without_cuda_fails_loudly_instead_of_training(
    tmp_path, monkeypatch, part, target, log
):
    """A real GPU job of each part (training M; a sample-level detector fit), under faked SLURM
    GPU variables: it stops at start and writes nothing."""
    for var in GPU_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    cfg = copy.deepcopy(TINY_CONFIG)
    other = "sample_level" if part == "model_level" else "model_level"
    cfg[other]["enabled"] = False
    cfg["sample_level"]["attacks"] = ["flip"]
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, target, check=False)
    assert proc.returncode != 0
    assert not (tmp_path / target).exists()
    text = (tmp_path / log).read_text()
    # (Snakemake's local executor passes CUDA_VISIBLE_DEVICES on; SLURM sets its own variables in
    # a real job)
    assert "given a GPU (" in text and "CUDA_VISIBLE_DEVICES=0" in text
    assert "epoch" not in text  # no training started
    # the CPU job before it (no device parameter) ran and said so
    assert "device: cpu (CPU job)" in (tmp_path / "logs/prepare_data/digits.log").read_text()
