"""Packaging (issue 16): a wheel that works outside the source tree, extras for the workflow and
the development tools, the license metadata, the citation file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DEV_TOOLS = [
    "pytest",
    "hypothesis",
    "ruff",
    "snakefmt",
    "spython",
    "adversarial-robustness-toolbox",
]


def _pins(path: Path) -> dict[str, str]:
    return {
        re.sub(r"\[.*\]", "", name).lower(): v
        for name, v in re.findall(r"(?im)^([a-z0-9][a-z0-9_.\-\[\]]*)==(\S+)", path.read_text())
    }


def _build_wheel(dest: Path) -> Path:
    """A wheel of this checkout, built from a copy of what the build needs (so that no build/ or
    egg-info folder is left in the checkout)."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "poisondetect", src / "poisondetect", ignore=shutil.ignore_patterns("__pycache__")
    )
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src)]
    cmd += ["-w", str(dest / "dist")]
    setuptools = tuple(int(p) for p in version("setuptools").split(".")[:2])
    if setuptools >= (77, 0):  # the build requirement is here: no download
        cmd.append("--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "license" not in proc.stderr.lower(), proc.stderr  # no deprecated license table
    (wheel,) = (dest / "dist").glob("poisondetect-*.whl")
    return wheel


@pytest.mark.packaging
def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    """`pip install` of the wheel (not editable) into a fresh venv gives a working command: its
    filter runs end to end on the digits, with the installed copy, not this checkout."""
    wheel = _build_wheel(tmp_path / "build")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py, exe = venv / "bin" / "python", venv / "bin" / "poisondetect"
    install = [sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet"]
    subprocess.run([*install, "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)

    # third-party libraries from this environment; the package only from the new venv
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": site, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONHOME", None)
    run = tmp_path / "elsewhere"
    run.mkdir()

    def call(*args, **kwargs):
        return subprocess.run(
            args, capture_output=True, text=True, env=env, cwd=run, timeout=600, **kwargs
        )

    where = call(str(py), "-c", "import poisondetect.config as c; print(c.__file__, c.SCHEMA_PATH)")
    assert where.returncode == 0, where.stderr
    module, schema = where.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(schema).is_relative_to(venv)
    assert Path(schema).is_file() and not Path(module).is_relative_to(REPO)

    assert (
        call(str(exe), "--version").stdout.strip()
        == f"poisondetect {PYPROJECT['project']['version']}"
    )
    help_text = call(str(exe), "audit", "--help")
    assert help_text.returncode == 0 and "exit status:" in help_text.stdout

    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, [1, 7])
    np.savez(run / "train.npz", x=(d.data[keep] / 16).astype(np.float32), y=d.target[keep])
    (run / "config.yaml").write_text(
        "sample_level:\n  autoencoders: {batch_size: 64, lr: 0.01}\n"
        "  cae_plus: {rae_epochs: 2, cae_epochs: 2}\n"
    )
    proc = call(str(exe), "filter", "--data", "train.npz", "--out", "points.csv",
                "--config", "config.yaml", "--arch", "dense", "--device", "cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        proc.stdout.startswith("cae_plus: flagged ")
        and f"of {int(keep.sum())} points" in proc.stdout
    )
    assert (run / "points.csv").read_text().startswith("index,label,score")


def test_license_metadata_and_package_data():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"  # an SPDX expression, not the deprecated table
    assert all((REPO / f).is_file() for f in project["license-files"])
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["poisondetect"]
    schemas = [p.relative_to(REPO / "poisondetect") for p in REPO.glob("poisondetect/schemas/*")]
    assert schemas and all(any(p.match(g) for g in data) for p in schemas)


def test_dev_tools_are_an_extra_not_a_users_dependency():
    project = PYPROJECT["project"]
    names = lambda reqs: {re.split(r"[<>=\[ ;]", r)[0].lower() for r in reqs}  # noqa: E731
    assert not names(project["dependencies"]) & set(DEV_TOOLS)
    assert set(DEV_TOOLS) <= names(project["optional-dependencies"]["dev"])
    assert "snakemake" in names(project["optional-dependencies"]["workflow"])
    users, dev = _pins(REPO / "requirements.txt"), _pins(REPO / "requirements-dev.txt")
    assert not set(users) & set(DEV_TOOLS) and set(DEV_TOOLS) <= set(dev)
    assert not set(users) & set(dev)
    lock = _pins(REPO / "requirements.lock")
    for name, pin in {**users, **dev}.items():
        assert lock.get(name) == pin, (name, pin, lock.get(name))
    for dep in names(project["dependencies"]):  # every runtime dependency is pinned for users
        assert dep in users, dep


def test_citation_file_cites_the_software_and_both_papers():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == PYPROJECT["project"]["version"] and cff["license"] == "MIT"
    refs = {r["doi"]: r for r in cff["references"]}
    model, sample = refs["10.1007/978-3-031-36574-4_22"], refs["10.1007/978-3-031-37586-6_16"]
    assert model["title"].startswith("Poisoning-Attack Detection Using an Auto-encoder")
    assert [a["family-names"] for a in model["authors"]] == [
        "El Moadine",
        "Coatrieux",
        "Bellafqira",
    ]
    assert "ICDF2C 2022" in model["collection-title"] and model["year"] == 2023
    assert sample["title"].startswith("Classification Auto-Encoder Based Detector")
    assert [a["family-names"] for a in sample["authors"]] == ["Razmi", "Xiong"]
    assert "DBSec 2023" in sample["collection-title"] and sample["volume"] == 13942
    assert (sample["start"], sample["end"]) == (263, 281)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_does_not_install_the_dev_tools_but_test_and_lint_do(tmp_path):
    def dry(target):
        proc = subprocess.run(
            ["make", "--no-print-directory", "-n", "-C", str(REPO), target, f"VENV={tmp_path}/v"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "requirements-dev.txt" not in dry("demo")
    for target in ("test", "lint"):
        text = dry(target)
        assert "-r requirements-dev.txt -c" in text and "-r requirements.txt" in text
