"""Penultimate-layer activations (a forward pre-hook on ``model.classifier``) and their Parquet files.

A dump holds one row per image: ``index`` (row in the input array), ``label``, ``pred`` (argmax of
the logits) and ``activation`` (a fixed-size list of float32). The caller's metadata is stored as JSON
in the Parquet schema metadata under the key ``poisondetect``. Files are written one row group per
batch, so the whole set is never held in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from poisondetect.errors import NONFINITE_HINT, PoisonDetectError, count_nonfinite, require_finite
from poisondetect.io import atomic_path, json_default
from poisondetect.models import feature_dim

METADATA_KEY = b"poisondetect"


@dataclass
class Activations:
    """The content of an activation dump."""

    index: np.ndarray  # int64 (N,)
    label: np.ndarray  # int64 (N,)
    pred: np.ndarray  # int64 (N,)
    activations: np.ndarray  # float32 (N, d), C-contiguous
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)


def _check_images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise PoisonDetectError(f"images must be shaped (N, C, H, W), got shape {x.shape}")
    return x


def iter_penultimate(
    model: nn.Module,
    x: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start_index, activations (b, d) float32, logits (b, k) float32)`` per batch.

    The activations are the input of ``model.classifier``, captured by a forward pre-hook that is
    removed afterwards. The model runs in eval mode (its previous mode is restored at the end) on
    ``device``, through the one batched inference (``fitting.iter_batches``).
    """
    from poisondetect.fitting import iter_batches

    x = _check_images(x)
    if batch_size < 1:
        raise PoisonDetectError(f"batch_size must be at least 1, got {batch_size}")
    feature_dim(model)  # checks that model.classifier exists
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach())

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch)
        if len(captured) != 1:
            raise PoisonDetectError(
                f"{type(model).__name__}.classifier ran {len(captured)} times in one forward "
                "pass; expected once"
            )
        return captured.pop().float().reshape(len(batch), -1), logits.float()

    was_training = model.training
    model.to(device).eval()
    handle = model.classifier.register_forward_pre_hook(hook)
    try:
        images = np.asarray(x, dtype=np.float32)
        for start, (acts, logits) in iter_batches(
            forward, [images], batch_size=batch_size, device=device
        ):
            yield start, acts.numpy(), logits.numpy()
    finally:
        handle.remove()
        model.train(was_training)


def penultimate_outputs(
    model: nn.Module,
    x: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    what: str = "model",
) -> tuple[np.ndarray, np.ndarray]:
    """All penultimate activations of ``x`` as one float32 ``(N, d)`` array, and the predicted
    classes ``(N,)``.

    A NaN or an infinity in any image's activations is an error naming ``what`` (the model) and
    how many of the images were affected: such activations would read as a clean verdict.
    """
    acts, preds = [], []
    for _, a, logits in iter_penultimate(model, x, batch_size, device):
        acts.append(a)
        preds.append(logits.argmax(1))
    if not acts:
        return np.zeros((0, feature_dim(model)), np.float32), np.zeros(0, np.int64)
    checked = require_finite(
        np.concatenate(acts), f"{what}: penultimate activations", NONFINITE_HINT, "trigger images"
    )
    return checked, np.concatenate(preds).astype(np.int64)


def penultimate_activations(
    model: nn.Module,
    x: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    what: str = "model",
) -> np.ndarray:
    """The activations of ``penultimate_outputs`` alone."""
    return penultimate_outputs(model, x, batch_size, device, what)[0]


def _schema(dim: int, metadata: dict[str, Any]) -> pa.Schema:
    try:
        meta_json = json.dumps(metadata, sort_keys=True, default=json_default)
    except (TypeError, ValueError) as e:
        raise PoisonDetectError(f"activation metadata is not JSON serialisable: {e}") from e
    return pa.schema(
        [
            ("index", pa.int64()),
            ("label", pa.int64()),
            ("pred", pa.int64()),
            ("activation", pa.list_(pa.float32(), dim)),
        ],
        metadata={METADATA_KEY: meta_json.encode()},
    )


def dump_activations(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    path: str | os.PathLike,
    metadata: dict[str, Any],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    what: str = "model",
) -> int:
    """Write the penultimate activations of ``x`` (labels ``y``) to the Parquet file ``path``.

    One row group per batch, written to a temporary file renamed onto ``path`` at the end.
    Returns the number of rows written.
    """
    x = _check_images(x)
    y = np.asarray(y)
    if y.shape != (len(x),):
        raise PoisonDetectError(
            f"labels must be shaped ({len(x)},) to match the images, got shape {y.shape}"
        )
    dim = feature_dim(model)
    schema = _schema(dim, metadata)
    rows = nonfinite = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        for start, acts, logits in iter_penultimate(model, x, batch_size, device):
            n = len(acts)
            nonfinite += count_nonfinite(acts)[0]
            table = pa.Table.from_arrays(
                [
                    pa.array(np.arange(start, start + n, dtype=np.int64)),
                    pa.array(y[start : start + n].astype(np.int64)),
                    pa.array(logits.argmax(axis=1).astype(np.int64)),
                    pa.FixedSizeListArray.from_arrays(pa.array(acts.reshape(-1)), dim),
                ],
                schema=schema,
            )
            writer.write_table(table)
            rows += n
        if nonfinite:  # raised inside the block: the temporary file is removed, no output is left
            raise PoisonDetectError(
                f"{metadata.get('model_file', what)}: penultimate activations: NaN or infinite "
                f"values on {nonfinite} of {len(x)} trigger images; {NONFINITE_HINT}"
            )
    return rows


def _corrupt(path: str | os.PathLike, problem: str) -> PoisonDetectError:
    return PoisonDetectError(
        f"{path}: {problem}; the activation dump is incomplete or corrupt; delete it and rerun the "
        "job that dumps the activations"
    )


def read_activations(path: str | os.PathLike) -> Activations:
    """Read a file written by :func:`dump_activations`."""
    path = Path(path)
    if not path.is_file():
        raise PoisonDetectError(f"{path}: activation file not found; rerun the activation dump")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise _corrupt(path, f"not a readable Parquet file ({e})") from e
    expected = {"index", "label", "pred", "activation"}
    missing = expected - set(table.column_names)
    if missing:
        raise _corrupt(path, f"missing column(s) {', '.join(sorted(missing))}")
    act_type = table.schema.field("activation").type
    if not pa.types.is_fixed_size_list(act_type):
        raise _corrupt(path, f"column 'activation' has type {act_type}, expected a fixed-size list")
    dim = act_type.list_size
    try:
        raw = (table.schema.metadata or {}).get(METADATA_KEY, b"{}")
        metadata = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _corrupt(path, f"metadata is not valid JSON ({e})") from e

    def ints(name: str) -> np.ndarray:
        return table.column(name).to_numpy().astype(np.int64, copy=False)

    acts = table.column("activation").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return Activations(
        index=ints("index"),
        label=ints("label"),
        pred=ints("pred"),
        activations=np.ascontiguousarray(acts.reshape(len(table), dim), dtype=np.float32),
        metadata=metadata,
    )
