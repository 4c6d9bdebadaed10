"""MNIST / Fashion-MNIST: the IDX files (plain or gzipped), read within the size limits."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from poisondetect.data.common import (
    FASHION_MNIST_CLASSES,
    _layout_error,
    _Raw,
)
from poisondetect.limits import (
    Limits,
    check_file_size,
    kind_of,
    over_limit,
    read_head,
    resolve,
)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_idx_file(fmt: str, directory: Path, stem: str) -> Path:
    """The IDX file ``stem`` in ``directory``: plain, ``.gz``, or the ``train-images.idx3-ubyte``
    spelling some copies use."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise _layout_error(fmt, directory, f"missing {stem} (or {stem}.gz)")


def read_idx(
    path: str | os.PathLike, fmt: str = "mnist", limits: Limits | Mapping | None = None
) -> np.ndarray:
    """Read one IDX file (plain or gzip, told by its first bytes) into a native-endian array.

    The header is validated first; the data are then read in exactly the size it announces (at
    most ``max_uncompressed_mb``; the file on disk at most ``max_file_mb``), so a gzip stream that
    expands beyond what the header says is never decompressed further.
    """
    path = Path(path)
    limits = resolve(limits)
    try:
        check_file_size(path, limits)
        gz = kind_of(read_head(path, 2)) == "gzip"
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise _layout_error(
                    fmt, path, f"not an IDX file (bad magic number {head.hex() or 'empty'})"
                )
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            dims_bytes = f.read(4 * head[3])
            if len(dims_bytes) < 4 * head[3]:
                raise _layout_error(fmt, path, "truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
            expected = math.prod(dims) * dtype.itemsize
            if expected > limits.max_uncompressed_bytes:
                what = f"data announced by the IDX header {dims}"
                raise over_limit(str(path), what, "max_uncompressed_mb", limits, expected)
            data = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise _layout_error(fmt, path, f"cannot read IDX file ({e})") from e
    if len(data) != expected:
        held = f"{len(data)} bytes" if len(data) < expected else "more bytes"
        raise _layout_error(
            fmt,
            path,
            f"IDX header announces shape {dims} ({expected} bytes of data) but the file holds "
            f"{held} after the header (truncated or wrong file)",
        )
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _read_idx_split(
    fmt: str, directory: Path, prefix: str, limits: Limits
) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx_file(fmt, directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx_file(fmt, directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path, fmt, limits), read_idx(labels_path, fmt, limits)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise _layout_error(
            fmt, images_path, f"expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise _layout_error(
            fmt, labels_path, f"expected uint8 labels (N,), got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise _layout_error(
            fmt,
            directory,
            f"{images_path.name} holds {len(images)} images but {labels_path.name} holds "
            f"{len(labels)} labels",
        )
    if len(labels) and labels.max() > 9:
        raise _layout_error(fmt, labels_path, f"label {labels.max()} outside 0..9")
    return images[:, None], labels.astype(np.int64)


def read_idx_dataset(directory: Path, *, fmt: str, limits: Limits) -> _Raw:
    """An IDX data set (MNIST, Fashion-MNIST): the four files of its directory."""
    if not directory.is_dir():
        raise _layout_error(fmt, directory, "not a directory")
    x_train, y_train = _read_idx_split(fmt, directory, "train", limits)
    x_test, y_test = _read_idx_split(fmt, directory, "t10k", limits)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise _layout_error(
            fmt,
            directory,
            f"train images are {x_train.shape[2:]} but test images {x_test.shape[2:]}",
        )
    classes = FASHION_MNIST_CLASSES if fmt == "fashion_mnist" else [str(d) for d in range(10)]
    return _Raw(fmt, fmt, x_train, y_train, x_test, y_test, list(classes), 255)


# --------------------------------------------------------------------------- CIFAR-10 pickles
