"""Penultimate activations: hook behaviour and the Parquet dump / reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from poisondetect.activations import (
    dump_activations,
    iter_penultimate,
    penultimate_activations,
    read_activations,
)
from poisondetect.errors import PoisonDetectError
from poisondetect.models import build_model


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", 1, 4, 8, width=0.25)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.random((23, 1, 8, 8), dtype=np.float32), rng.integers(0, 4, 23).astype(np.int64)


def test_hook_removed_and_mode_restored(model: torch.nn.Module, data) -> None:
    x, _ = data
    model.train()
    acts = penultimate_activations(model, x, batch_size=5)
    assert acts.shape == (23, 128) and acts.dtype == np.float32
    assert model.training
    assert not model.classifier._forward_pre_hooks
    # Eval mode and batching do not change the result.
    model.eval()
    with torch.no_grad():
        full = model.fc(model.features(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(acts, full, rtol=1e-5, atol=1e-6)


def test_hook_removed_when_iteration_stops_early(model: torch.nn.Module, data) -> None:
    x, _ = data
    it = iter_penultimate(model, x, batch_size=4)
    next(it)
    it.close()
    assert not model.classifier._forward_pre_hooks


def test_dump_read_round_trip(model: torch.nn.Module, data, tmp_path: Path) -> None:
    x, y = data
    path = tmp_path / "acts" / "genuine.parquet"
    meta = {"model": "genuine", "seed": 3, "nested": {"classes": ["a", "b"]}, "lr": 0.01}
    assert dump_activations(model, x, y, path, meta, batch_size=5) == 23
    assert pq.ParquetFile(path).metadata.num_row_groups == 5  # ceil(23 / 5), one per batch
    assert [p.name for p in path.parent.iterdir()] == ["genuine.parquet"]  # no temp file left

    got = read_activations(path)
    expected_acts = penultimate_activations(model, x, batch_size=23)
    logits = np.concatenate([lg for _, _, lg in iter_penultimate(model, x, batch_size=23)])
    assert len(got) == 23
    np.testing.assert_array_equal(got.index, np.arange(23))
    np.testing.assert_array_equal(got.label, y)
    np.testing.assert_array_equal(got.pred, logits.argmax(1))
    assert got.index.dtype == got.label.dtype == got.pred.dtype == np.int64
    assert got.activations.dtype == np.float32 and got.activations.flags.c_contiguous
    np.testing.assert_allclose(got.activations, expected_acts, rtol=1e-5, atol=1e-6)
    # Exact: the stored bytes are the float32 values produced for the same batches.
    again = penultimate_activations(model, x, batch_size=5)
    np.testing.assert_array_equal(got.activations, again)
    assert got.metadata == meta

    act_type = pq.read_schema(path).field("activation").type
    assert pa.types.is_fixed_size_list(act_type)
    assert act_type.list_size == 128 and act_type.value_type == pa.float32()


def test_truncated_parquet_raises(model: torch.nn.Module, data, tmp_path: Path) -> None:
    x, y = data
    path = tmp_path / "a.parquet"
    dump_activations(model, x, y, path, {}, batch_size=8)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PoisonDetectError, match=r"a\.parquet.*delete it and rerun"):
        read_activations(path)


def test_missing_and_garbage_files_raise(tmp_path: Path) -> None:
    with pytest.raises(PoisonDetectError, match="not found"):
        read_activations(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(PoisonDetectError, match="bad.parquet"):
        read_activations(bad)


def test_label_shape_mismatch_raises_and_writes_nothing(model, data, tmp_path: Path) -> None:
    x, y = data
    with pytest.raises(PoisonDetectError, match="labels"):
        dump_activations(model, x, y[:-1], tmp_path / "a.parquet", {})
    assert not list(tmp_path.iterdir())
