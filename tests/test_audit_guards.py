"""The audit command fails closed: non-finite weights or activations, another architecture than
the detector's, a truncated model: exit status 2 with one line naming the cause, never a verdict."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from conftest import REPO
from safetensors import safe_open
from safetensors.torch import save_file

CELL = "results/model_level/digits/cnn/standard/seed0"


def _audit(run, model, *extra):
    return subprocess.run(
        [
            sys.executable, "-m", "poisondetect", "audit",
            "--bundle", str(run / CELL / "detector.safetensors"),
            "--model", str(model),
            "--data", str(run / "results/data/digits.npz"),
            *extra,
        ],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip


def _tampered(run, tmp_path, change, name="tampered.safetensors", keep_digest=False):
    """A copy of the honest fine-tune's checkpoint with ``change`` applied, as someone else's tool
    would write it: its metadata kept, but without the content digest the workflow wrote (unless
    ``keep_digest``: the same file altered after the workflow wrote it)."""
    src = run / CELL / "models/honest_paper_r0.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["poisondetect"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    change(state)
    if not keep_digest:
        meta.pop("digest")
    out = tmp_path / name
    save_file(state, str(out), metadata={"poisondetect": json.dumps(meta)})
    return out


def _bad_input(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""  # no verdict printed
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    for w in words:
        assert w in line, line
    return line


def test_audit_of_the_intact_copy_gives_a_verdict(tiny_run, tmp_path):
    """Control: the copy machinery itself does not break the audit."""
    proc = _audit(tiny_run, _tampered(tiny_run, tmp_path, lambda s: None))
    assert proc.returncode in (0, 3), proc.stderr


def test_audit_of_a_checkpoint_altered_after_it_was_written_exits_2(tiny_run, tmp_path):
    """A byte of the weights changed, the workflow's digest kept: the file no longer matches."""

    def nudge(state):
        state["fc.1.weight"][0, 0] += 1.0

    path = _tampered(tiny_run, tmp_path, nudge, keep_digest=True)
    _bad_input(_audit(tiny_run, path), "does not match the digest")


def test_audit_of_nan_weights_exits_2(tiny_run, tmp_path):
    def nan(state):
        state["fc.1.weight"][0, 0] = float("nan")

    _bad_input(
        _audit(tiny_run, _tampered(tiny_run, tmp_path, nan)), "non-finite weights", "fc.1.weight"
    )


def test_audit_of_infinite_weights_exits_2(tiny_run, tmp_path):
    def inf(state):
        state["classifier.weight"][1, 2] = float("inf")

    _bad_input(
        _audit(tiny_run, _tampered(tiny_run, tmp_path, inf)), "non-finite", "classifier.weight"
    )


def test_audit_of_activations_that_overflow_on_some_images_exits_2(tiny_run, tmp_path):
    """Finite weights, but the 512-unit layer overflows float32 on part of the trigger set."""
    from poisondetect.checkpoints import load_checkpoint
    from poisondetect.data import load_prepared

    x = torch.from_numpy(load_prepared(tiny_run / "results/data/digits.npz").x_test)

    def layer_inputs(net, layer):
        seen = []
        handle = layer.register_forward_pre_hook(lambda m, i: seen.append(i[0].clone()))
        with torch.no_grad():
            net(x)
        handle.remove()
        return seen[0]

    # pick an input feature of the 512-unit layer that is above 1.2 on some images, below 1 on others
    net, _ = load_checkpoint(tiny_run / CELL / "models/honest_paper_r0.safetensors")
    f = layer_inputs(net, net.fc[1])
    k = int(torch.minimum((f > 1.2).sum(0), (f < 1.0).sum(0)).argmax())

    def blow_up(state):
        # one hidden unit reads feature k at a gain of 3e38 (finite): 3e38 * f overflows where
        # f > 1.13, so images with a large feature k get an infinite activation, the others not
        w = state["fc.1.weight"]
        w[0] = 0.0
        w[0, k] = 3e38
        state["fc.1.bias"][0] = 0.0

    path = _tampered(tiny_run, tmp_path, blow_up)
    net, _ = load_checkpoint(path)
    bad = int((~torch.isfinite(layer_inputs(net, net.classifier))).any(dim=1).sum())
    assert 0 < bad < len(x), "the tampering should hit some trigger images, not all or none"
    _bad_input(_audit(tiny_run, path), "activations", f"on {bad} of {len(x)} trigger images")


def test_audit_refuses_another_architecture_than_the_bundles(tiny_run):
    model = tiny_run / CELL / "models/flip_f50_e2_r0.safetensors"
    _bad_input(_audit(tiny_run, model, "--arch", "resnet18"), "cnn", "resnet18")
    proc = _audit(tiny_run, model, "--arch", "cnn", "--json")  # the bundle's own arch is fine
    assert proc.returncode in (0, 3) and json.loads(proc.stdout)["n_trigger"] > 0


def test_audit_of_a_truncated_model_names_the_cause_in_one_line(tiny_run, tmp_path):
    blob = (tiny_run / CELL / "models/flip_f50_e2_r0.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 3])
    line = _bad_input(_audit(tiny_run, tmp_path / "cut.safetensors"), "truncated", "sender")
    assert "rerun the job" not in line.split(";")[0]


def test_audit_of_a_checkpoint_of_another_architecture_exits_2(tiny_run, tmp_path):
    """A resnet18 checkpoint (its metadata says so) against the CNN's bundle: refused."""
    from safetensors import safe_open

    from poisondetect.checkpoints import save_checkpoint
    from poisondetect.models import build_model

    with safe_open(str(tiny_run / CELL / "models/genuine.safetensors"), framework="pt") as f:
        spec = json.loads(f.metadata()["poisondetect"])
    spec = {k: spec[k] for k in ("in_channels", "num_classes", "image_size", "width")}
    path = tmp_path / "other.safetensors"
    save_checkpoint(build_model("resnet18", **spec), path, {"arch": "resnet18", **spec})
    _bad_input(_audit(tiny_run, path), "arch='resnet18'", "arch='cnn'")
