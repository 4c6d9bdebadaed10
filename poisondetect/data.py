"""Dataset readers (digits, MNIST, Fashion-MNIST, CIFAR-10, image folders) and the prepared cache.

Every reader works on local files only: nothing is ever downloaded. A missing or malformed input
raises :class:`PoisonDetectError` naming the path and describing the layout that was expected.
Every reader is bounded (``poisondetect.limits``): file sizes, the sizes archives and compressed
files declare, member counts and image pixel counts are checked before the data are read, and a file
whose first bytes say it is not what its name says is refused at once.

Images come out as ``float32`` arrays shaped ``(N, C, H, W)`` with pixels in ``[0, 1]`` and labels
as ``int64``. ``prepare_dataset`` reads a dataset once and writes a compact ``.npz`` cache (pixels
as ``uint8`` plus the ``pixel_max`` they are divided by); ``load_prepared`` reads it back.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path
from poisondetect.limits import (
    Limits,
    MemberBudget,
    check_file_size,
    check_image_pixels,
    describe_head,
    kind_of,
    open_tar_stream,
    over_limit,
    pillow_pixel_limit,
    read_head,
    read_npz,
    resolve,
)
from poisondetect.seeds import stratified_subset as _stratified_subset

DATA_FORMATS: dict[str, str] = {
    "digits": "scikit-learn's bundled 8x8 handwritten digits (sklearn.datasets.load_digits); "
    "no path needed",
    "mnist": "a directory holding the four IDX files train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
    "(each plain or .gz), as in the original MNIST distribution",
    "fashion_mnist": "a directory holding the four IDX files train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
    "(each plain or .gz), e.g. /usr/share/datasets/fashion-mnist from Debian's "
    "dataset-fashion-mnist package",
    "cifar10": "the extracted cifar-10-batches-py directory (data_batch_1 ... data_batch_5, "
    "test_batch and batches.meta, from cifar-10-python.tar.gz)",
    "image_folder": "a directory, or a .tar / .tar.gz archive of it (optionally under one "
    "top-level folder), holding train/<class>/<image> and test/<class>/<image> "
    "(png, jpg, jpeg or bmp); classes are the sorted folder names, the same for train and test",
}

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
CACHE_VERSION = 1


@dataclass
class Dataset:
    """A train/test split of images (float32 (N, C, H, W) in [0, 1]) and int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])


@dataclass
class _Raw:
    """Reader output before scaling: uint8 pixels and the value that maps to 1.0."""

    name: str
    fmt: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    pixel_max: int

    def to_dataset(self) -> Dataset:
        scale = np.float32(self.pixel_max)
        return Dataset(
            name=self.name,
            x_train=self.x_train.astype(np.float32) / scale,
            y_train=self.y_train.astype(np.int64),
            x_test=self.x_test.astype(np.float32) / scale,
            y_test=self.y_test.astype(np.int64),
            classes=list(self.classes),
        )


def _layout_error(fmt: str, path: str | os.PathLike | None, problem: str) -> PoisonDetectError:
    return PoisonDetectError(
        f"{path}: {problem}. Expected for format {fmt!r}: {DATA_FORMATS[fmt]}. "
        "Nothing is downloaded: point the config at a local copy of the data."
    )


# --------------------------------------------------------------------------- public API


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
    """Read a dataset in format ``fmt`` from ``path`` (see ``DATA_FORMATS``).

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


def load_prepared(path: str | os.PathLike, limits: Limits | Mapping | None = None) -> Dataset:
    """Load a cache written by ``prepare_dataset``; a corrupt file raises a clear error.

    The file is checked as any ``.npz`` (``poisondetect.limits.read_npz``), except that its stored
    arrays are not size-limited: they are what the prepare step wrote under the limits then.
    """
    path = Path(path)
    if not path.is_file():
        raise PoisonDetectError(
            f"{path}: prepared dataset not found; run the prepare step (prepare_dataset) first"
        )
    keys = ("version", "name", "format", "classes", "pixel_max")
    keys += ("x_train", "y_train", "x_test", "y_test")
    hint = "delete it and rerun the prepare step"
    arrays = read_npz(path, list(keys), limits=limits, hint=hint, own_cache=True)
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
    except (ValueError, KeyError, TypeError) as e:
        raise PoisonDetectError(
            f"{path}: corrupt or truncated prepared dataset ({e}); {hint}"
        ) from e
    return raw.to_dataset()


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
    if fmt not in DATA_FORMATS:
        raise PoisonDetectError(
            f"unknown dataset format {fmt!r}; known formats: {', '.join(DATA_FORMATS)}"
        )
    if fmt == "digits":
        raw = _read_digits(test_fraction, seed)
    else:
        if path is None:
            raise _layout_error(fmt, path, "no path given")
        path = Path(path)
        if not path.exists():
            raise _layout_error(fmt, path, "does not exist")
        if fmt in ("mnist", "fashion_mnist"):
            raw = _read_idx_dataset(fmt, path, limits)
        elif fmt == "cifar10":
            raw = _read_cifar10(path, limits)
        else:
            raw = _read_image_folder(path, channels, image_size, limits)
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


# --------------------------------------------------------------------------- digits


def _read_digits(test_fraction: float, seed: int) -> _Raw:
    from sklearn.datasets import load_digits

    if not 0 < test_fraction < 1:
        raise PoisonDetectError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    y = bunch.target.astype(np.int64)
    test = np.zeros(len(y), dtype=bool)
    n_test = round(len(y) * test_fraction)
    test[_stratified_subset(y, n_test, np.random.default_rng(seed))] = True
    return _Raw(
        name="digits",
        fmt="digits",
        x_train=x[~test],
        y_train=y[~test],
        x_test=x[test],
        y_test=y[test],
        classes=[str(d) for d in range(10)],
        pixel_max=16,
    )


# --------------------------------------------------------------------------- IDX (MNIST)

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


def _read_idx_dataset(fmt: str, directory: Path, limits: Limits) -> _Raw:
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


def _read_cifar10(directory: Path, limits: Limits) -> _Raw:
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


def _iter_folder_files(root: Path, limits: Limits) -> Iterator[tuple[str, bytes | None]]:
    """(relative posix path, file bytes) of every image file under a directory, and
    (relative path + "/", None) for every directory (so that empty class folders are seen).

    A symbolic link that leads out of the folder is an error, never followed; links that stay
    inside are read (files) or left out (directories: their target is read where it lies).
    Entries are counted against ``max_members``, each image file's size (before it is read)
    against ``max_file_mb`` and their total against ``max_uncompressed_mb``.
    """
    real_root = root.resolve()
    budget = MemberBudget(limits, str(root))
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for d in dirnames:
            _check_link(here / d, root, real_root)
            budget.check(d, 0)
            if not (here / d).is_symlink():
                yield (here / d).relative_to(root).as_posix() + "/", None
        for name in sorted(filenames):
            file = here / name
            _check_link(file, root, real_root)
            if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file():
                rel = file.relative_to(root).as_posix()
                budget.check(rel, file.stat().st_size)
                yield rel, file.read_bytes()
            else:
                budget.check(name, 0)


def _check_link(path: Path, root: Path, real_root: Path) -> None:
    if path.is_symlink():
        target = path.resolve()
        if target != real_root and real_root not in target.parents:
            raise _layout_error(
                "image_folder",
                root,
                f"{path.relative_to(root)} is a symbolic link leading out of the folder (to "
                f"{os.readlink(path)}); it is not followed: copy the file into the folder instead",
            )


def _iter_tar_files(archive: Path, limits: Limits) -> Iterator[tuple[str, bytes | None]]:
    """(member path, bytes) of every image member, read in archive order without extracting
    (nothing is ever written to disk), and (path + "/", None) for every directory member.

    Members with an absolute path or ``..``, and links (symbolic or hard), are refused: such an
    archive is malformed or hostile, and links are never followed. The archive is read as a
    bounded stream (``poisondetect.limits.open_tar_stream``); every member's declared size is
    checked (``MemberBudget``) before its data are read.
    """
    budget = MemberBudget(limits, str(archive))
    try:
        with open_tar_stream(archive, limits) as tar:
            for member in tar:
                name = member.name
                budget.check(name, member.size)
                if name.startswith("/") or ".." in PurePosixPath(name).parts:
                    raise _layout_error(
                        "image_folder",
                        archive,
                        f"member {name!r} has an absolute path or '..'; refusing the archive "
                        "(repack it with relative paths: tar -C <folder> -cf data.tar train test)",
                    )
                if member.issym() or member.islnk():
                    raise _layout_error(
                        "image_folder",
                        archive,
                        f"member {name!r} is a link (to {member.linkname!r}); links are not "
                        "followed: repack the archive with the files themselves (tar -h)",
                    )
                if member.isdir():
                    yield name.rstrip("/") + "/", None
                elif member.isfile() and PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS:
                    f = tar.extractfile(member)
                    if f is not None:
                        yield name, f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise _layout_error("image_folder", archive, f"cannot read archive ({e})") from e


def _split_member(name: str) -> tuple[str, str, str, str] | None:
    """Map ``[top/]split/class/file`` to (top, split, class, file); None for other paths."""
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "/")]
    if any(p.startswith(".") for p in parts):  # hidden files such as macOS ._ resource forks
        return None
    if len(parts) == 3 and parts[0] in ("train", "test"):
        return ("", *parts)
    if len(parts) == 4 and parts[1] in ("train", "test"):
        return tuple(parts)  # type: ignore[return-value]
    return None


def _decode_image(
    data: bytes,
    where: str,
    source: Path,
    channels: int | None,
    image_size: int | None,
    limits: Limits,
) -> np.ndarray:
    """Decode to uint8 (H, W) (grayscale) or (H, W, 3), converted and resized as asked.

    The pixel count the header announces is checked against ``max_image_pixels`` before the image
    is decoded (inside ``pillow_pixel_limit``, which also sets Pillow's own bound to it).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            check_image_pixels(img.size, limits, f"{source}: {where}")
            img.load()
            if channels is None:
                mode = "L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            else:
                mode = "L" if channels == 1 else "RGB"
            img = img.convert(mode)
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise over_limit(f"{source}: {where}", "pixel count", "max_image_pixels", limits) from None
    except PoisonDetectError:
        raise
    except (OSError, ValueError) as e:
        raise _layout_error("image_folder", source, f"cannot decode image {where} ({e})") from e


def _read_image_folder(
    path: Path, channels: int | None, image_size: int | None, limits: Limits
) -> _Raw:
    if channels not in (None, 1, 3):
        raise PoisonDetectError(f"channels must be 1, 3 or None, got {channels!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise PoisonDetectError(
            f"image_size must be a positive integer or None, got {image_size!r}"
        )
    if path.is_dir():
        files = _iter_folder_files(path, limits)
        name = path.name
    else:
        # told by the first bytes (tarfile.is_tarfile would decompress a whole file of zeros)
        head = read_head(path)
        if kind_of(head) not in ("tar", "gzip", "bzip2", "xz"):
            raise _layout_error(
                "image_folder",
                path,
                f"neither a directory nor a tar archive (the file is {describe_head(head)})",
            )
        files = _iter_tar_files(path, limits)
        name = path.name.split(".")[0]

    entries: list[tuple[str, str, str]] = []  # (split, class, file name)
    images: list[np.ndarray] = []
    tops: set[str] = set()
    folders: set[tuple[str, str, str]] = set()  # (top, split, class) of every class folder
    with pillow_pixel_limit(limits):
        for member, data in files:
            if data is None:  # a directory: remember class folders
                parts = [p for p in PurePosixPath(member).parts if p not in (".", "/")]
                if len(parts) == 2 and parts[0] in ("train", "test"):
                    folders.add(("", parts[0], parts[1]))
                elif len(parts) == 3 and parts[1] in ("train", "test"):
                    folders.add((parts[0], parts[1], parts[2]))
                continue
            parsed = _split_member(member)
            if parsed is None:
                continue
            top, split, cls, fname = parsed
            tops.add(top)
            entries.append((split, cls, fname))
            images.append(_decode_image(data, member, path, channels, image_size, limits))
    if len(tops) > 1:
        raise _layout_error(
            "image_folder", path, f"several top-level folders ({sorted(tops)}); expected one"
        )

    splits: dict[str, list[int]] = {"train": [], "test": []}
    for i in sorted(range(len(entries)), key=entries.__getitem__):
        splits[entries[i][0]].append(i)
    class_lists = {s: sorted({entries[i][1] for i in idx}) for s, idx in splits.items()}
    for split, idx in splits.items():
        if not idx:
            raise _layout_error("image_folder", path, f"no images under {split}/<class>/")
    (top,) = tops
    empty = sorted(
        f"{t + '/' if t else ''}{split}/{cls}/"
        for t, split, cls in folders
        if t == top and not cls.startswith(".") and cls not in class_lists[split]
    )
    if empty:  # a class with no images would silently shift the class indices of the others
        raise _layout_error(
            "image_folder",
            path,
            f"class folder(s) {', '.join(empty)} hold no images; add images or remove the folder",
        )
    if class_lists["train"] != class_lists["test"]:
        raise _layout_error(
            "image_folder",
            path,
            f"train classes {class_lists['train']} differ from test classes {class_lists['test']}",
        )
    classes = class_lists["train"]
    if len(classes) < 2:
        raise _layout_error(
            "image_folder",
            path,
            f"only one class ({classes[0]}); a classifier needs at least two class folders",
        )

    sizes = {img.shape[:2] for img in images}
    if len(sizes) > 1:
        odd = next(i for i, img in enumerate(images) if img.shape[:2] != images[0].shape[:2])
        raise _layout_error(
            "image_folder",
            path,
            f"images differ in size ({'/'.join(entries[0])} is {images[0].shape[:2]}, "
            f"{'/'.join(entries[odd])} is {images[odd].shape[:2]}); set image_size to resize them",
        )
    gray = all(img.ndim == 2 for img in images)
    n_channels = channels or (1 if gray else 3)

    def stack(indices: list[int]) -> np.ndarray:
        out = np.empty((len(indices), n_channels, *images[0].shape[:2]), dtype=np.uint8)
        for j, i in enumerate(indices):
            img = images[i]
            out[j] = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        return out

    def labels(indices: list[int]) -> np.ndarray:
        lookup = {c: k for k, c in enumerate(classes)}
        return np.array([lookup[entries[i][1]] for i in indices], dtype=np.int64)

    return _Raw(
        name=name,
        fmt="image_folder",
        x_train=stack(splits["train"]),
        y_train=labels(splits["train"]),
        x_test=stack(splits["test"]),
        y_test=labels(splits["test"]),
        classes=classes,
        pixel_max=255,
    )


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
