"""The Makefile's set-up: interpreter check before anything is installed, the TORCH=cpu switch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _fake_python(directory: Path, version: str, name: str = "python3") -> Path:
    """An interpreter that reports ``version`` (and can do nothing else: nothing gets installed)."""
    directory.mkdir(parents=True, exist_ok=True)
    fake = directory / name
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    return fake


def _make(*args: str, path_first: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_default_python3_too_old_stops_make_demo_with_the_version(tmp_path):
    bindir = tmp_path / "bin"
    _fake_python(bindir, "3.10.12")
    venv = tmp_path / "venv"
    proc = _make("demo", f"VENV={venv}", path_first=bindir)
    assert proc.returncode != 0
    assert "python3 is Python 3.10.12" in proc.stderr
    assert "needs Python >= 3.11" in proc.stderr
    assert "make demo PYTHON=python3.11" in proc.stderr
    assert not venv.exists()  # stopped before creating or installing anything


def test_an_old_existing_environment_is_named(tmp_path):
    venv = tmp_path / "venv"
    _fake_python(venv / "bin", "3.10.4", name="python")
    proc = _make("test", f"VENV={venv}", f"PYTHON={sys.executable}")
    assert proc.returncode != 0
    assert f"{venv} was made with Python 3.10.4" in proc.stderr
    assert f"rm -rf {venv}" in proc.stderr and "make test PYTHON=python3.11" in proc.stderr


def test_missing_interpreter_is_named(tmp_path):
    proc = _make("venv", f"VENV={tmp_path / 'venv'}", "PYTHON=python3.99-not-here")
    assert proc.returncode != 0
    assert "'python3.99-not-here' not found" in proc.stderr


def test_a_supported_interpreter_passes_the_check(tmp_path):
    assert sys.version_info >= (3, 11)
    proc = _make("check-python", f"VENV={tmp_path / 'venv'}", f"PYTHON={sys.executable}")
    assert proc.returncode == 0, proc.stderr
    bindir = tmp_path / "bin"
    _fake_python(bindir, "3.12.1")
    assert _make("check-python", f"VENV={tmp_path / 'venv'}", path_first=bindir).returncode == 0


def test_unknown_torch_variant_is_refused(tmp_path):
    proc = _make("venv", "TORCH=gpu", f"VENV={tmp_path / 'venv'}")
    assert proc.returncode != 0 and "TORCH=gpu is not known" in proc.stderr


def test_cpu_switch_installs_the_cpu_build_and_keeps_nvidia_out(tmp_path):
    """`make -n` shows the commands: CPU index, fallback, the no-CUDA check, a lock without torch,
    NVIDIA and triton pins; the default build is unchanged."""
    venv = tmp_path / "venv"
    cpu = _make("-n", "venv", "TORCH=cpu", "TORCH_INDEX=https://mirror.example/cpu", f"VENV={venv}")
    assert cpu.returncode == 0, cpu.stderr
    assert '--extra-index-url https://mirror.example/cpu "torch==2.14.1+cpu"' in cpu.stdout
    assert '"torch==2.13.0+cpu"' in cpu.stdout  # the fallback
    assert "torch.version.cuda is None" in cpu.stdout
    assert "-r requirements.txt" not in cpu.stdout
    default = _make("-n", "venv", f"VENV={venv}")
    assert "-r requirements.txt -c requirements.lock" in default.stdout
    assert "whl/cpu" not in default.stdout
    # the filters the CPU path applies to the pins: no CUDA package survives them
    req = subprocess.run(
        ["grep", "-v", "^torch==", str(REPO / "requirements.txt")], capture_output=True, text=True
    ).stdout
    lock = subprocess.run(
        ["grep", "-vE", "^(torch|triton|nvidia-|cuda-)", str(REPO / "requirements.lock")],
        capture_output=True,
        text=True,
    ).stdout
    assert "torch==" not in req and "snakemake" in req
    assert not [
        ln for ln in lock.splitlines() if ln.startswith(("nvidia", "triton", "cuda", "torch"))
    ]
    assert "numpy==" in lock


def _probe(tmp_path: Path, url: str) -> int:
    """Exit status of the Makefile's index probe (INDEX_PROBE) for ``url``: 0 when it answers."""
    mk = tmp_path / "probe.mk"
    mk.write_text(
        f"include {REPO / 'Makefile'}\n"
        "probe:\n"
        f'\t@{sys.executable} -c "exec(\'$(INDEX_PROBE)\')" "$(URL)"\n'
    )
    proc = subprocess.run(
        ["make", "-s", "-f", str(mk), "probe", f"URL={url}", f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode


def test_cpu_index_is_probed_before_pip_is_asked(tmp_path):
    """An index that does not answer gets one line and the fallback at once (not pip's resolution
    ERROR first); the probe tells an answering index from a silent one without pip."""
    cpu = _make("-n", "venv", "TORCH=cpu", "TORCH_INDEX=http://127.0.0.1:9/", f"VENV={tmp_path}")
    assert cpu.returncode == 0, cpu.stderr
    assert "exec('import os, sys, urllib" in cpu.stdout
    assert "http://127.0.0.1:9/ does not answer; installing torch==2.13.0+cpu" in cpu.stdout
    assert _probe(tmp_path, "http://127.0.0.1:9/") != 0  # nothing listens on the discard port
    assert _probe(tmp_path, tmp_path.as_uri()) == 0  # a local (file:) index that exists
    assert _probe(tmp_path, (tmp_path / "missing").as_uri()) != 0
