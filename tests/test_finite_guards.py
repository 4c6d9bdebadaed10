"""Fail closed on non-finite numbers: NaN / infinite weights, activations and scores are bad input.

``nan > threshold`` is False, so without these guards a broken or hostile model reads as clean.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from poisondetect.activations import dump_activations, penultimate_activations
from poisondetect.checkpoints import (
    _unpickle_reason,
    check_arch,
    load_checkpoint,
    load_state_dict_safely,
    save_checkpoint,
)
from poisondetect.detectors.decision import gmm_decision, top_k_decision
from poisondetect.errors import PoisonDetectError, count_nonfinite, require_finite
from poisondetect.models import build_model

SPEC = {"arch": "cnn", "in_channels": 1, "num_classes": 3, "image_size": 8, "width": 0.125}


def test_require_finite_counts_rows_and_names_what():
    a = np.ones((10, 4), np.float32)
    assert require_finite(a, "x", "fix it") is a
    a[2, 1], a[5, 0], a[5, 3], a[9, 2] = np.nan, np.inf, -np.inf, np.nan
    with pytest.raises(
        PoisonDetectError, match=r"^acts: NaN or infinite values on 3 of 10 images; do"
    ):
        require_finite(a, "acts", "do this", "images")
    assert count_nonfinite(torch.from_numpy(a)) == (3, 10)
    assert count_nonfinite(np.float64(np.nan)) == (1, 1)
    assert count_nonfinite(np.arange(4)) == (0, 4)  # integers are always finite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_with_non_finite_weights_is_refused(tmp_path: Path, bad, suffix):
    torch.manual_seed(0)
    model = build_model(**SPEC)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.1.weight"][3, 2] = bad
    state["classifier.bias"][0] = bad
    path = tmp_path / f"m{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        safetensors.torch.save_file(state, str(path))
    with pytest.raises(PoisonDetectError) as e:
        load_checkpoint(path, **SPEC)
    msg = str(e.value)
    assert "non-finite weights" in msg and "2 of " in msg
    assert "fc.1.weight" in msg and "classifier.bias" in msg and "\n" not in msg
    with pytest.raises(PoisonDetectError, match="non-finite"):
        load_state_dict_safely(path)


def test_finite_checkpoint_still_loads(tmp_path: Path):
    model = build_model(**SPEC)
    save_checkpoint(model, tmp_path / "m.safetensors", SPEC)
    load_checkpoint(tmp_path / "m.safetensors")


def test_other_architecture_than_the_detectors_is_refused():
    assert check_arch(None, "cnn", "bundle b") == "cnn"
    assert check_arch("cnn", "cnn", "bundle b") == "cnn"
    assert check_arch("resnet18", None, "bundle b") == "resnet18"
    with pytest.raises(
        PoisonDetectError, match=r"bundle b was fitted on .* cnn model, not resnet18"
    ):
        check_arch("resnet18", "cnn", "bundle b")


def test_refused_pickle_reason_names_the_global_in_both_torch_wordings():
    old = "Weights only load failed. Unsupported global: GLOBAL posix.system was not an allowed global"
    new = (
        "Weights only load failed. In PyTorch 2.6, we changed ...\n\n\nTrying to load unsupported "
        "GLOBAL posix.system whose module posix is blocked.\n\nCheck the documentation"
    )
    for message in (old, new):
        assert _unpickle_reason(message) == (
            "it references posix.system, which is code, not a tensor"
        )


class _Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_os_system_pickle_is_refused_naming_the_call_and_never_run(tmp_path: Path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "x": _Shell(marker)}, tmp_path / "evil.pt")
    with pytest.raises(PoisonDetectError) as e:
        load_state_dict_safely(tmp_path / "evil.pt")
    assert "refusing to unpickle" in str(e.value)
    assert f"{os.system.__module__}.system" in str(
        e.value
    )  # posix.system, not "unsupported content"
    assert not marker.exists()


def test_truncated_received_model_gets_one_line_naming_the_cause(tmp_path: Path):
    model = build_model(**SPEC)
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"m{suffix}"
        if suffix == ".pt":
            torch.save(model.state_dict(), path)
        else:
            save_checkpoint(model, path, SPEC)
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
        with pytest.raises(PoisonDetectError) as e:
            load_checkpoint(path, **SPEC)
        msg = str(e.value)
        assert "\n" not in msg and "truncated or corrupt" in msg
        assert "sender" in msg  # a received model is not told only to rerun a workflow job


class _Overflow(nn.Module):
    """Penultimate activation = first pixel x 3e38 x 2: infinite (float32) where that pixel is 1."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x[:, 0, 0, :1] * 3e38 * 2.0)


def _overflow_images() -> np.ndarray:
    x = np.full((10, 1, 2, 2), 0.5, np.float32)
    x[[1, 4, 8], 0, 0, 0] = 1.0  # 6e38 overflows float32; 3e38 does not
    return x


def test_activations_overflowing_on_some_trigger_images_are_refused(tmp_path: Path):
    with pytest.raises(PoisonDetectError, match=r"m\.pt: .*on 3 of 10 trigger images"):
        penultimate_activations(_Overflow(), _overflow_images(), batch_size=4, what="m.pt")
    x = _overflow_images()
    x[:, 0, 0, 0] = 0.5
    assert np.isfinite(penultimate_activations(_Overflow(), x)).all()


def test_activation_dump_with_overflow_leaves_no_file(tmp_path: Path):
    out = tmp_path / "acts" / "m.parquet"
    with pytest.raises(PoisonDetectError, match=r"m\.safetensors: .*on 3 of 10 trigger images"):
        dump_activations(
            _Overflow(),
            _overflow_images(),
            np.zeros(10, np.int64),
            out,
            {"model_file": "m.safetensors"},
            batch_size=3,
        )
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("decide", [lambda s: gmm_decision(s), lambda s: top_k_decision(s, 1)])
def test_sample_level_decisions_refuse_non_finite_scores(decide):
    s = np.array([0.1, 0.2, np.nan, 0.3, np.inf])
    with pytest.raises(PoisonDetectError, match="on 2 of 5 points"):
        decide(s)
