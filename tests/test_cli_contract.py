"""One exit contract everywhere (issue 16): 0 success, 1 internal error (a bug: traceback),
2 bad input (one ``error:`` line), 3 audit's POISONED; in the commands, the jobs and the Snakefile."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors
from conftest import REPO, snakemake_cmd, write_config

from poisondetect import __main__ as cli
from poisondetect.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL_ERROR,
    EXIT_POISONED,
    PoisonDetectError,
    user_error_message,
)

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LATIN1 = "datasets:\n  digits:\n    format: digits\n# caf\xe9 au lait\n".encode("latin1")


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory) -> Path:
    """300 digits of classes 1 and 7 (flattened, in [0, 1]) for the filter command."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, [1, 7])
    path = tmp_path_factory.mktemp("cli") / "train.npz"
    np.savez(path, x=(d.data[keep][:300] / 16).astype(np.float32), y=d.target[keep][:300])
    return path


def _cli(*args: str, cwd: Path | None = None, prefix: list[str] | None = None):
    cmd = [*(prefix or []), sys.executable, "-m", "poisondetect", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(
    not _can_mount_tmpfs(), reason="needs root and mount namespaces (unshare -m) for a tiny tmpfs"
)


def _on_tmpfs(directory: Path, options: str) -> list[str]:
    """A command prefix that runs the command with a private tmpfs (``options``, e.g. size=4k or
    ro) mounted on ``directory``; the mount disappears with the command."""
    directory.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o {options} tmpfs "{directory}" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh"]


# --------------------------------------------------------------------------- help and version


def test_help_states_the_exit_codes_and_version_is_printed(capsys):
    for argv in (["--help"], ["filter", "--help"], ["audit", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "exit status:" in out and "3  audit: the model is flagged POISONED" in out
        assert "2  bad input" in out and "1  internal error" in out
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"poisondetect {cli.version()}"
    assert cli.version()[0].isdigit()
    assert (EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR, EXIT_POISONED) == (2, 1, 3)
    assert "0 success" in cli.__doc__ and "3\n``audit`` flagged" in cli.__doc__


# --------------------------------------------------------------------------- config files


def test_config_that_is_not_utf8_is_one_line_naming_it(tmp_path, small_npz):
    config = tmp_path / "config.yaml"
    config.write_bytes(LATIN1)
    proc = _cli("filter", "--data", str(small_npz), "--out", str(tmp_path / "o.csv"),
                "--config", str(config))  # fmt: skip
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert f"--config {config}: not UTF-8 text (byte 0xe9 on line 4)" in line
    config.write_text("sample_level:\n  cae_plus: [1\n")
    proc = _cli("filter", "--data", str(small_npz), "--out", str(tmp_path / "o.csv"),
                "--config", str(config))  # fmt: skip
    assert proc.returncode == 2 and "not valid YAML" in _one_error_line(proc.stderr)
    assert "line 3" in proc.stderr
    assert not (tmp_path / "o.csv").exists()


def _snakemake_default_config(workdir: Path, *args: str) -> list[str]:
    """Snakemake on the workflow with its default config file (no --configfile: Snakemake itself
    reads a --configfile before the Snakefile runs, and prints its own traceback for one that is
    not UTF-8; the Snakefile cannot catch that)."""
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir), *args]  # fmt: skip


@pytest.mark.workflow
def test_snakemake_config_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    (tmp_path / "config.yaml").write_bytes(LATIN1)
    cmd = _snakemake_default_config(tmp_path, "-n", "--cores", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == ["error: config.yaml: not UTF-8 text (byte 0xe9 on line 4); save the file "
                      "as UTF-8 (e.g. iconv -f latin1 -t utf-8 old.yaml > new.yaml)"]  # fmt: skip
    assert "Traceback" not in proc.stderr and "File " not in proc.stderr


@pytest.mark.workflow
def test_snakemake_invalid_config_is_one_line(tmp_path):
    write_config(tmp_path, {"model_level": {"train": {"epoch": 3}}})
    cmd = snakemake_cmd(tmp_path, "-n", "--cores", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "unknown config key 'model_level.train.epoch'" in errors[0]
    assert "did you mean 'epochs'" in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.workflow
def test_snakemake_misspelt_statistic_stops_the_plan_in_one_line(tmp_path):
    """A statistic no detector emits is found when the run is planned, not in calibrate after
    every fine-tune: one line naming the key and the known names, no job."""
    write_config(
        tmp_path, {"model_level": {"calibration": {"verdict": ["prediction_flow:larges"]}}}
    )
    proc = subprocess.run(
        snakemake_cmd(tmp_path, "-n", "--cores", "1"),
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "model_level.calibration.verdict names 'prediction_flow:larges'" in errors[0]
    assert "prediction_flow:largest" in errors[0]  # the known names
    assert "Job stats" not in proc.stdout + proc.stderr and not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- full disks


def test_full_disk_on_out_is_one_line(tmp_path, small_npz, monkeypatch, capsys):
    import pandas as pd

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "o.csv"
    argv = ["filter", "--data", str(small_npz), "--out", str(out), "--detector", "od"]
    assert cli.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on the device while writing" in line and "df -h" in line
    assert not out.exists() and not list(tmp_path.iterdir())  # no temporary file left


@needs_tmpfs
@pytest.mark.parametrize(
    ("options", "expected"),
    [("size=4k", "no space left on the device while writing"), ("ro", "read-only file system")],
)
def test_out_on_a_full_or_read_only_file_system_is_one_line(tmp_path, small_npz, options, expected):
    mount = tmp_path / "mnt"
    proc = _cli("filter", "--data", str(small_npz), "--out", str(mount / "points.csv"),
                "--detector", "od", prefix=_on_tmpfs(mount, options))  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert expected in line and str(mount) in line


_SAVE_JOB = """
import resource, signal, sys
from poisondetect.checkpoints import save_checkpoint
from poisondetect.logs import run_logged
from poisondetect.models import build_model
log, out, fsize = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = {"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 8, "width": 0.25}
model = build_model("cnn", 1, 10, 8, 0.25)
if fsize:  # the shell's file-size limit (ulimit -f): writes beyond it fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
run_logged([log], save_checkpoint, model, out, spec)
"""


def _save_job(log: Path, out: Path, fsize: int = 0, prefix: list[str] | None = None):
    cmd = [*(prefix or []), sys.executable, "-c", _SAVE_JOB, str(log), str(out), str(fsize)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def _one_job_error(proc: subprocess.CompletedProcess, log: Path) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and " ERROR poisondetect: " in lines[0], proc.stderr
    assert "Traceback" not in log.read_text()
    return lines[0]


def test_job_whose_safetensors_write_fails_is_one_line(tmp_path):
    """safetensors raises its own error type for I/O errors: a job still ends with one line."""
    log, out = tmp_path / "job.log", tmp_path / "models" / "genuine.safetensors"
    line = _one_job_error(_save_job(log, out, fsize=16384), log)
    assert f"file too large (the file system's or the shell's file-size limit, ulimit -f) while " \
           f"writing {out}" in line  # fmt: skip
    assert not out.exists() and not list(out.parent.iterdir())


@needs_tmpfs
def test_job_writing_a_checkpoint_on_a_full_disk_is_one_line(tmp_path):
    mount = tmp_path / "mnt"
    log = tmp_path / "job.log"
    proc = _save_job(log, mount / "genuine.safetensors", prefix=_on_tmpfs(mount, "size=16k"))
    line = _one_job_error(proc, log)
    assert f"no space left on the device while writing {mount / 'genuine.safetensors'}" in line


def test_safetensors_and_os_errors_map_to_one_line():
    err = safetensors.SafetensorError(
        'Error while serializing: I/O error: No space left on device (os error 28) at path "/r/x"'
    )
    assert user_error_message(err).startswith("no space left on the device while writing /r/x;")
    assert user_error_message(safetensors.SafetensorError("invalid header")) is None
    assert user_error_message(OSError(errno.EACCES, "Permission denied", "/r/y")).startswith(
        "/r/y: permission denied;"
    )
    assert user_error_message(OSError(errno.EROFS, "x", "/r")).startswith("/r: read-only")
    assert user_error_message(OSError(errno.ENOENT, "x")) is None  # no file named: a bug
    assert user_error_message(PoisonDetectError("a\n  - b")) == "a - b"
    assert user_error_message(KeyError("x")) is None


# --------------------------------------------------------------------------- internal errors


def test_an_unexpected_exception_is_status_1_with_its_traceback(monkeypatch, capsys, small_npz):
    import poisondetect.filtering

    def crash(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(poisondetect.filtering, "run_filter", crash)
    assert cli.main(["filter", "--data", str(small_npz), "--out", "x.csv"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'a bug'" in err
    assert "internal error in poisondetect" in err.splitlines()[-1]


# --------------------------------------------------------------------------- checkpoints


def test_old_style_pickle_checkpoint_is_refused_naming_what_was_found(tmp_path, capfd):
    import pickle

    import torch

    class Net(torch.nn.Module):  # a whole module, as torch.save(model) writes it
        pass

    legacy = tmp_path / "legacy.pt"
    plain = tmp_path / "plain.pt"
    torch.save(torch.nn.Linear(2, 2), legacy, _use_new_zipfile_serialization=False)
    plain.write_bytes(pickle.dumps({"w": [1.0], "run": os.system}, protocol=4))
    from poisondetect.checkpoints import load_state_dict_safely

    expected = {legacy: "torch.nn.modules.linear.Linear", plain: f"{os.system.__module__}.system"}
    for path, found in expected.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(PoisonDetectError) as e:
                load_state_dict_safely(path)
        assert f"it references {found}, which is code, not a tensor" in str(e.value)
        assert not caught, [str(w.message) for w in caught]  # torch's warnings silenced
    assert capfd.readouterr().err == ""
    data_only = tmp_path / "data.pt"
    data_only.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    with pytest.raises(PoisonDetectError, match="plain pickle .opcode FRAME, protocol 4"):
        load_state_dict_safely(data_only)


def test_audit_table_columns_line_up_whatever_the_statistic_names():
    rows = [
        {"detector": name, "score": 0.5, "threshold": 0.25, "pvalue": 0.1, "flagged": True}
        for name in ("ae_mean", "differential_trigger_inversion:anomaly_index")
    ]
    text = cli.format_audit(
        {
            "model": "m.safetensors",
            "n_trigger": 10,
            "bundle_digest": "0" * 64,
            "integrity": "checked against the file itself only",
            "fpr": 0.05,
            "guaranteed_fpr": 0.1,
            "fpr_reachable": False,
            "n_honest": 9,
            "replicates_needed": 19,
            "verdict_pvalue": 0.1,
            "detectors": rows,
            "verdict_from": ["ae_mean"],
            "flagged_by": ["ae_mean"],
            "verdict": "POISONED",
        }
    )
    # the rate it can guarantee, and what it would take to reach the requested one
    assert "guarantees: 10%" in text and "19 are needed" in text
    table = [line for line in text.splitlines() if line.rstrip().endswith(("flagged", "yes"))]
    assert len(table) == 3  # the header and both statistics
    ends = {line.index("flagged") if "flagged" in line else line.index("yes") for line in table}
    assert len(ends) == 1, text  # the flag column starts at the same place on every line
