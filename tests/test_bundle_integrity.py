"""The audit verifies its bundle before it believes it: a detector bundle edited after the
workflow wrote it (thresholds set to NaN or to 1e9, the verdict emptied, a byte of its arrays
flipped) is refused with one line and exit status 2, never turned into "not poisoned"; a bundle
whose digest was recomputed after such an edit is still refused where the edit is visible (non-
finite or raised thresholds: every threshold is derived again from the honest scores; an empty
verdict; a list where a mapping belongs), and a digest other than the expected one (the run's
bundles.csv, or --expect-digest) is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from safetensors import safe_open
from safetensors.numpy import save_file

from poisondetect.bundles import content_digest
from poisondetect.detectors.base import parse_statistic

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


def _audit(run, bundle, *extra, model="flip_f50_e2_r0"):
    return subprocess.run(
        [
            sys.executable, "-m", "poisondetect", "audit",
            "--bundle", str(bundle),
            "--model", str(run / CELL / f"models/{model}.safetensors"),
            "--data", str(run / "results/data/digits.npz"),
            *extra,
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


def _calibration(meta, **changes):
    return {**meta, "calibration": {**meta["calibration"], **changes}}


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
        (lambda m: {k: v for k, v in m.items() if k != "trigger_set"}, ("lacks", "trigger_set")),
        (lambda m: _thresholds(m, 1e9), ("is not the one its honest scores give",)),
        (
            lambda m: _calibration(m, thresholds=list(m["calibration"]["thresholds"])),
            ("calibration.thresholds must be a mapping", "list"),
        ),
        (lambda m: _calibration(m, honest_models="x"), ("honest_models",)),
        (lambda m: _calibration(m, fpr="0.05"), ("calibration.fpr",)),
        (
            lambda m: {**m, "trigger_set": {**m["trigger_set"], "seed": [0]}},
            ("trigger_set.seed must be int",),
        ),
        (lambda m: {**m, "detectors": {"ae_mean": []}}, ("detectors['ae_mean']",)),
    ],
    ids=[
        "nan-thresholds",
        "empty-verdict",
        "no-trigger-set",
        "huge-thresholds",
        "list-for-mapping",
        "honest-models",
        "fpr-string",
        "seed-list",
        "detector-list",
    ],
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


def test_only_the_verdicts_thresholds_raised_is_refused_too(tiny_run, tmp_path):
    arrays, meta = _load(tiny_run)
    cal = meta["calibration"]
    verdict = {":".join(parse_statistic(v)) for v in cal["verdict"]}
    raised = {
        k: {**v, "threshold": 1e9} if k in verdict else v for k, v in cal["thresholds"].items()
    }
    assert raised != cal["thresholds"]
    bundle = _write(
        tmp_path / "r.safetensors", arrays, _calibration(meta, thresholds=raised), redigest=True
    )
    _refused(_audit(tiny_run, bundle), "is not the one its honest scores give")


def test_the_audit_checks_the_digest_against_the_runs_bundles_csv(tiny_run, tmp_path):
    proc = _audit(tiny_run, tiny_run / CELL / "detector.safetensors")
    assert proc.returncode in (0, 3), proc.stderr
    assert "digest matches" in proc.stdout and "bundles.csv" in proc.stdout
    # a copy elsewhere has no bundles.csv above it: the output says what was (not) checked
    arrays, meta = _load(tiny_run)
    copy = _write(tmp_path / "copy.safetensors", arrays, meta, redigest=False)
    proc = _audit(tiny_run, copy)
    assert proc.returncode in (0, 3), proc.stderr
    assert "checked against the file itself only" in proc.stdout
    ok = _audit(tiny_run, copy, "--expect-digest", meta["digest"])
    assert ok.returncode in (0, 3) and "digest matches --expect-digest" in ok.stdout
    # a re-digested edit (one honest score changed) is refused against the expected digest
    cal = meta["calibration"]
    name = next(iter(cal["thresholds"]))
    t = cal["thresholds"][name]
    edited = {**t, "honest_scores": [v + 1.0 for v in t["honest_scores"]]}
    forged = _write(
        tmp_path / "forged.safetensors",
        arrays,
        _calibration(meta, thresholds={**cal["thresholds"], name: edited}),
        redigest=True,
    )
    _refused(_audit(tiny_run, forged, "--expect-digest", meta["digest"]), "not the expected")
    _refused(_audit(tiny_run, copy, "--expect-digest", "zz"), "--expect-digest")


def test_a_bundle_replaced_in_the_run_is_refused_by_bundles_csv(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    (run / CELL).mkdir(parents=True)
    shutil.copy(tiny_run / "results/model_level/bundles.csv", run / "results/model_level/")
    arrays, meta = _load(tiny_run)
    _write(run / CELL / "detector.safetensors", arrays, _thresholds(meta, 1e9), redigest=True)
    proc = subprocess.run(
        [
            sys.executable, "-m", "poisondetect", "audit",
            "--bundle", str(run / CELL / "detector.safetensors"),
            "--model", str(tiny_run / CELL / "models/flip_f50_e2_r0.safetensors"),
            "--data", str(tiny_run / "results/data/digits.npz"),
        ],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    _refused(proc, "not the expected", "bundles.csv")
