"""The audit verifies its bundle before it believes it: a detector bundle edited after the
workflow wrote it (thresholds set to NaN or to 1e9, the verdict emptied, a byte of its arrays
flipped) is refused with one line and exit status 2, never turned into "not poisoned"; a bundle
whose digest was recomputed after such an edit is still refused where the edit is visible (non-
finite thresholds, an empty verdict), and its digest differs from the one the workflow logged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from safetensors import safe_open
from safetensors.numpy import save_file

from poisondetect.bundles import content_digest

CELL = "results/model_level/digits/cnn/standard/seed0"


def _load(run):
    with safe_open(str(run / CELL / "detector.safetensors"), framework="numpy") as f:
        meta = json.loads(f.metadata()["poisondetect"])
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    return arrays, meta


def _write(path, arrays, meta, *, redigest: bool):
    if redigest:
        meta = {**meta, "digest": content_digest(arrays, meta)}
    save_file(arrays, str(path), metadata={"poisondetect": json.dumps(meta)})
    return path


def _audit(run, bundle):
    return subprocess.run(
        [
            sys.executable, "-m", "poisondetect", "audit",
            "--bundle", str(bundle),
            "--model", str(run / CELL / "models/flip_f50_e2_r0.safetensors"),
            "--data", str(run / "results/data/digits.npz"),
        ],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip


def _refused(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    for w in words:
        assert w in line, line


def _thresholds(meta, value):
    cal = meta["calibration"]
    return {
        **meta,
        "calibration": {
            **cal,
            "thresholds": {k: {**v, "threshold": value} for k, v in cal["thresholds"].items()},
        },
    }


def _no_verdict(meta):
    return {**meta, "calibration": {**meta["calibration"], "verdict": []}}


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: _thresholds(m, float("nan")),
        lambda m: _thresholds(m, 1e9),
        _no_verdict,
    ],
    ids=["nan-thresholds", "huge-thresholds", "empty-verdict"],
)
def test_an_edited_bundle_is_refused_by_its_digest(tiny_run, tmp_path, edit):
    arrays, meta = _load(tiny_run)
    bundle = _write(tmp_path / "edited.safetensors", arrays, edit(meta), redigest=False)
    _refused(_audit(tiny_run, bundle), "does not match the digest")


def test_a_flipped_byte_in_the_arrays_is_refused(tiny_run, tmp_path):
    arrays, meta = _load(tiny_run)
    name = next(k for k in arrays if k.startswith("ae."))
    a = arrays[name].copy()
    a.view("uint8").reshape(-1)[0] ^= 1
    bundle = _write(tmp_path / "flipped.safetensors", {**arrays, name: a}, meta, redigest=False)
    _refused(_audit(tiny_run, bundle), "does not match the digest")


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: _thresholds(m, float("nan")), ("not finite",)),
        (_no_verdict, ("verdict names no detector",)),
        (lambda m: {k: v for k, v in m.items() if k != "trigger_set"}, ("lacks trigger_set",)),
    ],
    ids=["nan-thresholds", "empty-verdict", "no-trigger-set"],
)
def test_a_redigested_bundle_is_still_checked(tiny_run, tmp_path, edit, words):
    arrays, meta = _load(tiny_run)
    bundle = _write(tmp_path / "redigested.safetensors", arrays, edit(meta), redigest=True)
    _refused(_audit(tiny_run, bundle), *words)


def test_the_audit_prints_the_digest_the_workflow_logged(tiny_run):
    _, meta = _load(tiny_run)
    proc = _audit(tiny_run, tiny_run / CELL / "detector.safetensors")
    assert proc.returncode in (0, 3), proc.stderr
    assert meta["digest"] in proc.stdout
    log = (tiny_run / "logs/model_level/digits/cnn/standard/seed0/calibrate.log").read_text()
    assert meta["digest"] in log
    table = (tiny_run / "results/model_level/bundles.csv").read_text()
    assert meta["digest"] in table and "detector.safetensors" in table
