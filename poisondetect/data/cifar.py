"""CIFAR-10: the cifar-10-batches-py pickles, through an unpickler that admits numpy arrays and
nothing else, within the size limits."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from poisondetect.data.common import (
    _layout_error,
    _Raw,
)
from poisondetect.limits import (
    Limits,
    check_file_size,
)


def _safe_pickle_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR-10 batch may reference: what numpy arrays and bytes need."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray

    return {
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): multiarray.scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,  # how protocol 2 stores Python 3 bytes
    }


def _latin1_encode(text: str | bytes, encoding: str | bytes = "latin1") -> bytes:
    """Restricted stand-in for ``_codecs.encode``: only the text codecs pickle uses."""
    if isinstance(encoding, bytes):  # Python 2 strings arrive as bytes (encoding="bytes")
        encoding = encoding.decode("latin1")
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return text if isinstance(text, bytes) else text.encode(encoding)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array globals, so a pickle cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _safe_pickle_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _load_cifar_pickle(path: Path, limits: Limits) -> dict[str, object]:
    """Load one CIFAR-10 batch file with the restricted unpickler; keys come back as str.

    The file is at most ``max_file_mb`` (a pickle's objects are no larger than its bytes: the
    restricted unpickler builds nothing but arrays, bytes and plain containers from them).
    """
    if not path.is_file():
        raise _layout_error("cifar10", path.parent, f"missing {path.name}")
    check_file_size(path, limits)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise _layout_error(
            "cifar10", path, f"refused to unpickle: {e} (only numpy arrays and plain containers)"
        ) from e
    except Exception as e:  # any other failure means a malformed file
        raise _layout_error("cifar10", path, f"not a CIFAR-10 pickle ({e!r})") from e
    if not isinstance(obj, dict):
        raise _layout_error("cifar10", path, f"expected a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_cifar_batch(path: Path, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_cifar_pickle(path, limits)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise _layout_error("cifar10", path, "b'data' must be a uint8 array of shape (N, 3072)")
    if data.shape[1] != 3 * 32 * 32:
        raise _layout_error("cifar10", path, f"b'data' has {data.shape[1]} columns, expected 3072")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise _layout_error("cifar10", path, f"b'labels' is not a list of integers ({e})") from e
    if y.shape != (len(data),):
        raise _layout_error(
            "cifar10", path, f"{len(data)} images but b'labels' has shape {y.shape}"
        )
    return data.reshape(-1, 3, 32, 32), y


def read_cifar10(directory: Path, *, limits: Limits) -> _Raw:
    """CIFAR-10's python batches (the extracted cifar-10-batches-py directory)."""
    if not directory.is_dir():
        raise _layout_error("cifar10", directory, "not a directory")
    if not (directory / "batches.meta").exists() and (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    meta = _load_cifar_pickle(directory / "batches.meta", limits)
    names = meta.get("label_names")
    if not isinstance(names, list) or not names:
        raise _layout_error("cifar10", directory / "batches.meta", "no b'label_names' list")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    train = [_read_cifar_batch(directory / f"data_batch_{i}", limits) for i in range(1, 6)]
    x_test, y_test = _read_cifar_batch(directory / "test_batch", limits)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    for split, y in (("training", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise _layout_error(
                "cifar10", directory, f"{split} labels outside 0..{len(classes) - 1}"
            )
    return _Raw("cifar10", "cifar10", x_train, y_train, x_test, y_test, classes, 255)


# --------------------------------------------------------------------------- image folders
