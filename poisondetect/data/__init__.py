"""Dataset readers (digits, MNIST, Fashion-MNIST, CIFAR-10, image folders) and the prepared cache.

Every reader works on local files only: nothing is ever downloaded. A missing or malformed input
raises :class:`PoisonDetectError` naming the path and describing the layout that was expected.
Every reader is bounded (``poisondetect.limits``): file sizes, the sizes archives and compressed
files declare, member counts and image pixel counts are checked before the data are read, and a file
whose first bytes say it is not what its name says is refused at once.

Images come out as ``float32`` arrays shaped ``(N, C, H, W)`` with pixels in ``[0, 1]`` and labels
as ``int64``. ``prepare_dataset`` reads a dataset once and writes a compact ``.npz`` cache (pixels
as ``uint8`` plus the ``pixel_max`` they are divided by); ``load_prepared`` reads it back.

The readers are modules of their own (``digits``, ``idx``, ``cifar``, ``image_folder``), named by
the one table of formats (``formats.FORMATS``), ``common`` what they share; this module holds the
public entry points, the prepared cache and the ``prepare_data`` stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from poisondetect.archives import read_npz
from poisondetect.data.common import (
    CACHE_VERSION,
    FASHION_MNIST_CLASSES,
    Dataset,
    _layout_error,
    _Raw,
)
from poisondetect.data.formats import FORMATS, DataFormat
from poisondetect.data.idx import read_idx
from poisondetect.errors import PoisonDetectError, short
from poisondetect.io import atomic_path
from poisondetect.limits import Limits, resolve
from poisondetect.seeds import stratified_subset as _stratified_subset

USER_PREPARED_HINT = (
    "give the prepared .npz of the data set that the workflow wrote under results/data/ "
    "(arrays version, name, format, classes, pixel_max, x_train, y_train, x_test, y_test)"
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FORMATS",
    "DataFormat",
    "Dataset",
    "load_prepared",
    "prepare",
    "prepare_dataset",
    "read_dataset",
    "read_idx",
]


def read_dataset(
    fmt: str,
    path: str | os.PathLike | None = None,
    *,
    channels: int | None = None,
    image_size: int | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    limits: Limits | Mapping | None = None,
) -> Dataset:
    """Read a dataset in format ``fmt`` from ``path`` (``formats.FORMATS``: the formats).

    ``channels`` and ``image_size`` apply to ``image_folder`` only; ``test_fraction`` and ``seed``
    to ``digits`` only (it has no official split). ``limits``: the bounds of what is read
    (default: ``poisondetect.limits.current_limits()``).
    """
    return _read_raw(
        fmt,
        path,
        channels=channels,
        image_size=image_size,
        test_fraction=test_fraction,
        seed=seed,
        limits=limits,
    ).to_dataset()


def prepare_dataset(
    fmt: str,
    path: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    require_classes: list[tuple[str, int]] | None = None,
    **reader_options,
) -> Dataset:
    """Read a dataset once, optionally subsample it, write the ``.npz`` cache atomically.

    ``max_train`` / ``max_test`` keep a seeded, stratified subset of that many samples (original
    order kept). ``reader_options`` go to ``read_dataset`` (``seed`` is passed on too; ``limits``
    bounds what is read, default ``poisondetect.limits.current_limits()``). Returns the dataset as
    ``load_prepared(out)`` will return it. ``require_classes``: (config key, class index) pairs the
    config uses on this data set; one out of range is an error naming the key.
    """
    raw = _read_raw(fmt, path, seed=seed, **reader_options)
    bad = [f"{key} = {c}" for key, c in (require_classes or []) if not 0 <= c < len(raw.classes)]
    if bad:  # before anything is written: a wrong class never costs a training run
        raise PoisonDetectError(
            f"{path or fmt}: {', '.join(bad)} out of range: the data set has {len(raw.classes)} "
            f"classes (0..{len(raw.classes) - 1}: {', '.join(raw.classes[:12])}"
            f"{', ...' if len(raw.classes) > 12 else ''}); fix the config"
        )
    rng = np.random.default_rng(seed)
    if max_train is not None:
        keep = _stratified_subset(raw.y_train, _check_max("max_train", max_train), rng)
        raw.x_train, raw.y_train = raw.x_train[keep], raw.y_train[keep]
    if max_test is not None:
        keep = _stratified_subset(raw.y_test, _check_max("max_test", max_test), rng)
        raw.x_test, raw.y_test = raw.x_test[keep], raw.y_test[keep]
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                version=np.int64(CACHE_VERSION),
                name=np.str_(raw.name),
                format=np.str_(raw.fmt),
                classes=np.array(raw.classes, dtype=np.str_),
                pixel_max=np.int64(raw.pixel_max),
                x_train=raw.x_train,
                y_train=raw.y_train.astype(np.int64),
                x_test=raw.x_test,
                y_test=raw.y_test.astype(np.int64),
            )
    return raw.to_dataset()


def load_prepared(
    path: str | os.PathLike,
    limits: Limits | Mapping | None = None,
    *,
    user_file: bool = False,
    label: str | None = None,
) -> Dataset:
    """Load a cache written by ``prepare_dataset``; a corrupt file raises a clear error.

    The file is checked as any ``.npz`` (``poisondetect.archives.read_npz``), except that the
    workflow's own cache is not size-limited on disk nor in its stored arrays: they are what the
    prepare step wrote under the limits then. ``user_file`` (a path a user gave, e.g. ``audit
    --data``): every limit applies, and the errors (named ``label``) never advise deleting it.
    """
    return read_prepared(path, limits, user_file=user_file, label=label).to_dataset()


def read_prepared(
    path: str | os.PathLike,
    limits: Limits | Mapping | None = None,
    *,
    user_file: bool = False,
    label: str | None = None,
) -> _Raw:
    """``load_prepared`` before the pixels are scaled: every check, the uint8 arrays (a check of
    a user's file costs no float copy)."""
    path = Path(path)
    label = label or str(path)
    if not user_file and not path.exists():
        raise PoisonDetectError(
            f"{path}: prepared dataset not found; run the prepare step (prepare_dataset) first"
        )
    keys = ("version", "name", "format", "classes", "pixel_max")
    keys += ("x_train", "y_train", "x_test", "y_test")
    hint = USER_PREPARED_HINT if user_file else "delete it and rerun the prepare step"
    arrays = read_npz(
        path, list(keys), limits=limits, label=label, hint=hint, own_cache=not user_file
    )
    try:
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ValueError(f"missing arrays {missing}")
        if int(arrays["version"]) != CACHE_VERSION:
            raise ValueError(f"cache version {int(arrays['version'])}, expected {CACHE_VERSION}")
        raw = _Raw(
            name=str(arrays["name"]),
            fmt=str(arrays["format"]),
            x_train=arrays["x_train"],
            y_train=arrays["y_train"],
            x_test=arrays["x_test"],
            y_test=arrays["y_test"],
            classes=[str(c) for c in arrays["classes"]],
            pixel_max=int(arrays["pixel_max"]),
        )
        _check_raw(raw)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        what = (
            "not a valid prepared data set"
            if user_file
            else "corrupt or truncated prepared dataset"
        )
        raise PoisonDetectError(f"{label}: {what} ({short(str(e), 160)}); {hint}") from None
    return raw


# --------------------------------------------------------------------------- helpers


def _read_raw(
    fmt: str,
    path: str | os.PathLike | None,
    *,
    channels: int | None = None,
    image_size: int | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    limits: Limits | Mapping | None = None,
) -> _Raw:
    limits = resolve(limits)
    spec = FORMATS.get(fmt)
    if spec is None:
        raise PoisonDetectError(
            f"unknown dataset format {fmt!r}; known formats: {', '.join(FORMATS)}"
        )
    if spec.needs_path:
        if path is None:
            raise _layout_error(fmt, path, "no path given")
        path = Path(path)
        if not path.exists():
            raise _layout_error(fmt, path, "does not exist")
    options = dict(channels=channels, image_size=image_size, test_fraction=test_fraction, seed=seed)
    raw = spec.read(fmt, path, limits, options)
    _check_raw(raw)
    return raw


def _check_raw(raw: _Raw) -> None:
    """Sanity checks shared by readers and the cache loader."""
    for split in ("train", "test"):
        x, y = getattr(raw, f"x_{split}"), getattr(raw, f"y_{split}")
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"x_{split} must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
        if y.shape != (len(x),):
            raise ValueError(f"y_{split} has shape {y.shape}, expected ({len(x)},)")
        if y.dtype.kind not in "iu":
            raise ValueError(f"y_{split} holds {y.dtype} values; labels must be integers")
        if len(y) and (y.min() < 0 or y.max() >= len(raw.classes)):
            raise ValueError(f"y_{split} has labels outside 0..{len(raw.classes) - 1}")
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise ValueError(f"train {raw.x_train.shape[1:]} and test {raw.x_test.shape[1:]} differ")
    if raw.pixel_max <= 0:
        raise ValueError(f"pixel_max must be positive, got {raw.pixel_max}")


def _check_max(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PoisonDetectError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def prepare(fmt: str, path: str | None, out: str, options: dict) -> None:
    """The workflow's ``prepare_data`` stage (both parts read its cache): read a data set once and
    write it to ``out`` with ``prepare_dataset``."""
    import logging
    import time

    t0 = time.perf_counter()
    ds = prepare_dataset(fmt, path, out, **options)
    logging.getLogger(__name__).info(
        "prepared %s (%s): %d train / %d test images of shape %s, %d classes in %.1fs",
        ds.name,
        fmt,
        len(ds.y_train),
        len(ds.y_test),
        ds.x_train.shape[1:],
        len(ds.classes),
        time.perf_counter() - t0,
    )
