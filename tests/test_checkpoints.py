"""Checkpoints: safetensors round trip, weights-only .pt loading, refusal of code-carrying pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from poisondetect.checkpoints import load_checkpoint, load_state_dict_safely, save_checkpoint
from poisondetect.errors import PoisonDetectError
from poisondetect.models import build_model

SPEC = {"arch": "resnet18", "in_channels": 1, "num_classes": 3, "image_size": 8, "width": 0.125}


class _Planted:
    """An object whose unpickling creates ``marker`` (stands for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def trained() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(**SPEC)
    model.train()  # move the BatchNorm running statistics away from their defaults
    with torch.no_grad():
        model(torch.rand(8, 1, 8, 8))
    return model.eval()


def _outputs(model: torch.nn.Module) -> np.ndarray:
    x = torch.from_numpy(np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_safetensors_round_trip(trained: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "models" / "genuine.safetensors"
    meta = {**SPEC, "epochs": 2, "dataset": "digits"}
    save_checkpoint(trained, path, meta)
    assert [p.name for p in path.parent.iterdir()] == ["genuine.safetensors"]
    model, got_meta = load_checkpoint(path)
    assert got_meta == meta
    np.testing.assert_array_equal(_outputs(model), _outputs(trained))
    assert not model.training


def test_save_requires_spec(trained: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(PoisonDetectError, match="num_classes"):
        save_checkpoint(trained, tmp_path / "m.safetensors", {"arch": "resnet18"})


def test_truncated_safetensors_raises(trained: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(trained, path, SPEC)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PoisonDetectError, match=r"m\.safetensors.*corrupt"):
        load_checkpoint(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(PoisonDetectError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_weights_only_state_dict_loads(trained: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(trained.state_dict(), path)
    with pytest.raises(PoisonDetectError, match="arch=.*in_channels="):
        load_checkpoint(path)  # a plain state dict does not say what model it is
    model, meta = load_checkpoint(path, **SPEC)
    np.testing.assert_array_equal(_outputs(model), _outputs(trained))
    assert meta == SPEC


def test_state_dict_with_metadata_and_module_prefix(trained: torch.nn.Module, tmp_path) -> None:
    path = tmp_path / "m.pth"
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"state_dict": state, "metadata": SPEC}, path)
    model, _ = load_checkpoint(path)
    np.testing.assert_array_equal(_outputs(model), _outputs(trained))


def test_shape_mismatch_raises(trained: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(trained.state_dict(), path)
    with pytest.raises(PoisonDetectError, match=r"m\.pt.*shape mismatch"):
        load_checkpoint(path, **(SPEC | {"num_classes": 5}))
    with pytest.raises(PoisonDetectError, match="missing key"):
        load_checkpoint(path, **(SPEC | {"arch": "cnn"}))


def test_conflicting_spec_raises(trained: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(trained, path, SPEC)
    with pytest.raises(PoisonDetectError, match="num_classes=3"):
        load_checkpoint(path, num_classes=10)
    load_checkpoint(path, image_size=(8, 8))  # same spec, other spelling


@pytest.mark.parametrize("writer", ["torch_save", "plain_pickle"])
def test_code_carrying_pickle_is_refused(trained, tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload = {**trained.state_dict(), "extra": _Planted(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(PoisonDetectError, match="refusing to unpickle a suspicious model"):
        load_checkpoint(path, **SPEC)
    with pytest.raises(PoisonDetectError, match="safetensors"):
        load_state_dict_safely(path)
    assert not marker.exists()


def test_planted_object_really_runs_code(tmp_path: Path) -> None:
    """Control for the test above: an ordinary unpickle does create the marker."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Planted(marker))).close()
    assert marker.exists()


def test_whole_module_pickle_is_refused(trained: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(trained, path)
    with pytest.raises(PoisonDetectError, match="refusing to unpickle"):
        load_checkpoint(path, **SPEC)


def test_non_tensor_entries_are_refused(trained: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    torch.save({**trained.state_dict(), "epoch": 3}, path)
    with pytest.raises(PoisonDetectError, match="non-tensor entries.*epoch"):
        load_checkpoint(path, **SPEC)


def test_unknown_suffix_raises(tmp_path: Path) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(b"x")
    with pytest.raises(PoisonDetectError, match="unknown checkpoint format"):
        load_state_dict_safely(path)
