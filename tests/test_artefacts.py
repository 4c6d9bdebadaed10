"""No shortcut through artefacts: detectors read weights and behaviour only. The same model re-saved
with other metadata or in another file format, or with a buffer that does not change what it
computes, gets the same scores; and no detector reads which classes the attacks target."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import torch
import yaml
from conftest import REPO, TINY_CONFIG, snakemake
from safetensors import safe_open
from safetensors.torch import save_file

from poisondetect.detectors import registry
from poisondetect.detectors.model_level import ModelRecord

CELL = "results/model_level/digits/cnn/standard/seed0"


def _audit_scores(run, model) -> dict[str, float]:
    proc = subprocess.run(
        [
            sys.executable, "-m", "poisondetect", "audit", "--json",
            "--bundle", str(run / CELL / "detector.safetensors"), "--model", str(model),
            "--data", str(run / "results/data/digits.npz"),
        ],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode in (0, 3), proc.stderr
    return {d["detector"]: d["score"] for d in json.loads(proc.stdout)["detectors"]}


def test_other_metadata_and_file_format_give_the_same_scores(tiny_run, tmp_path):
    src = tiny_run / CELL / "models/flip_f50_e2_r0.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["poisondetect"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    original = _audit_scores(tiny_run, src)
    # the same weights, other metadata (another name, seed, a note; no digest, as another tool)
    other = {k: v for k, v in meta.items() if k != "digest"} | {
        "model": "renamed", "seed": 123, "note": "re-saved"
    }  # fmt: skip
    save_file(
        state, str(tmp_path / "renamed.safetensors"), metadata={"poisondetect": json.dumps(other)}
    )
    # the same weights as a weights-only .pt state dict (no metadata at all: --arch from the bundle)
    torch.save(state, tmp_path / "weights.pt")
    for path in (tmp_path / "renamed.safetensors", tmp_path / "weights.pt"):
        assert _audit_scores(tiny_run, path) == original, path


def test_a_buffer_that_changes_nothing_changes_no_score():
    """BatchNorm's num_batches_tracked counts training steps (the Trojan Detection Challenge banned
    such training artefacts as features): changing it must not move a weight-based score."""
    from poisondetect.model_level.scoring import model_weights
    from poisondetect.models import build_model

    net = build_model("resnet18", 1, 10, 8, 0.125)
    labels = np.arange(10)
    genuine = ModelRecord("genuine", labels, labels, weights=model_weights(net))
    sd = net.state_dict()
    sd["bn1.num_batches_tracked"] += 1000
    net.load_state_dict(sd)
    det = registry.build("model", "weight_distance").fit(genuine)
    same = ModelRecord("same", labels, labels, weights=model_weights(net))
    assert det.statistics([same]) == det.statistics([genuine])


def test_detectors_never_read_the_configured_classes(tiny_run, tmp_path):
    """The same population scored again with the config's attack classes changed (the models are
    not retrained: time stamps only) gives the same scores."""
    work = tmp_path / "copy"
    shutil.copytree(tiny_run, work, symlinks=True)
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["model_level"]["attacks"].update(target_class=3, attacker_class=5)
    (work / "classes.yaml").write_text(yaml.safe_dump(cfg))
    files = sorted((work / CELL / "scores").glob("*.csv"))
    assert len(files) == len(TINY_CONFIG["model_level"]["detectors"])
    before = {p.name: pd.read_csv(p) for p in files}
    stamps = {p.name: p.stat().st_mtime_ns for p in files}
    snakemake(
        work,
        "--forcerun", "score_detector", "--rerun-triggers", "mtime",
        "--until", "score_detector",
        configfile=work / "classes.yaml",
    )  # fmt: skip
    for name, df in before.items():
        assert (work / CELL / "scores" / name).stat().st_mtime_ns > stamps[name]  # scored again
        pd.testing.assert_frame_equal(pd.read_csv(work / CELL / "scores" / name), df)
