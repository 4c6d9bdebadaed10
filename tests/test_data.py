"""Tests of the dataset readers and the prepared cache, each on small files of the real format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisondetect.data import (
    FASHION_MNIST_CLASSES,
    FORMATS,
    load_prepared,
    prepare_dataset,
    read_dataset,
)
from poisondetect.errors import PoisonDetectError

REAL_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


# --------------------------------------------------------------------------- file makers


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000 08 ndim, big-endian dims)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_dir(root: Path, gz: bool, n_train: int = 20, n_test: int = 10) -> dict:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / name, array, gz)
    return arrays


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
CIFAR_NAMES += [b"dog", b"frog", b"horse", b"ship", b"truck"]


def make_cifar_dir(root: Path, n: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A cifar-10-batches-py directory: dicts with bytes keys, pickled with protocol 2."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = (data, labels)
    meta = {b"label_names": CIFAR_NAMES, b"num_cases_per_batch": n, b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def make_image_folder(root: Path, mode: str = "RGB", size: int = 6) -> dict:
    """train/<class>/*.png and test/<class>/*.png with known pixels; returns them by path."""
    rng = np.random.default_rng(3)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    pixels = {}
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("zebra", "ant", "cat"):  # sorted: ant, cat, zebra
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                array = rng.integers(0, 256, shape, dtype=np.uint8)
                ext = ".PNG" if i == 0 else ".png"
                Image.fromarray(array, mode).save(folder / f"{i:02d}{ext}")
                pixels[f"{split}/{cls}/{i:02d}"] = array
    (root / "train" / "README.txt").write_text("not an image, ignored")
    return pixels


def as_uint8(x: np.ndarray, pixel_max: int = 255) -> np.ndarray:
    return np.rint(x * pixel_max).astype(np.uint8)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_deterministic_stratified_split() -> None:
    ds = read_dataset("digits", test_fraction=0.25, seed=0)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_test.shape[1:] == (1, 8, 8)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == round(1797 * 0.25)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 1, 8)
    assert ds.classes == [str(d) for d in range(10)]
    # stratified: every class's test share is within one sample of its proportion
    total = np.bincount(ds.y_train, minlength=10) + np.bincount(ds.y_test, minlength=10)
    assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - total * 0.25) <= 1)

    again = read_dataset("digits", test_fraction=0.25, seed=0)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    np.testing.assert_array_equal(again.y_train, ds.y_train)
    other = read_dataset("digits", test_fraction=0.25, seed=1)
    assert not np.array_equal(other.x_test, ds.x_test)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_mnist_idx_reader(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dir(tmp_path / "mnist", gz)
    ds = read_dataset("mnist", tmp_path / "mnist")
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(as_uint8(ds.x_train[:, 0]), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(as_uint8(ds.x_test[:, 0]), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.classes == [str(d) for d in range(10)]


def test_fashion_mnist_class_names(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=True)
    ds = read_dataset("fashion_mnist", tmp_path)
    assert ds.name == "fashion_mnist"
    assert ds.classes == FASHION_MNIST_CLASSES
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_truncated_idx_is_refused(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dir(tmp_path, gz)
    data = idx_bytes(arrays["train-images-idx3-ubyte"])[:-100]  # header intact, data cut
    bad = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    bad.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(PoisonDetectError, match="truncated") as err:
        read_dataset("mnist", tmp_path)
    assert str(bad) in str(err.value)
    assert "Nothing is downloaded" in str(err.value)


def test_cut_gzip_stream_is_refused(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PoisonDetectError, match="cannot read IDX") as err:
        read_dataset("mnist", tmp_path)
    assert str(path) in str(err.value)


def test_idx_bad_magic_and_count_mismatch(tmp_path: Path) -> None:
    arrays = make_idx_dir(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, arrays["train-labels-idx1-ubyte"][:-1], gz=False)
    with pytest.raises(PoisonDetectError, match="20 images but .* 19 labels") as err:
        read_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(err.value)

    labels.write_bytes(b"\x08\x03\x00\x00" + bytes(20))
    with pytest.raises(PoisonDetectError, match="bad magic") as err:
        read_dataset("mnist", tmp_path)
    assert str(labels) in str(err.value)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_reader(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    batches = make_cifar_dir(root)
    ds = read_dataset("cifar10", root)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.classes == [n.decode() for n in CIFAR_NAMES]
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(as_uint8(ds.x_train).reshape(20, 3072), train)
    np.testing.assert_array_equal(
        as_uint8(ds.x_test), batches["test_batch"][0].reshape(4, 3, 32, 32)
    )
    # channel-major: the first 1024 values are the red plane
    np.testing.assert_array_equal(
        as_uint8(ds.x_test[0, 0]).ravel(), batches["test_batch"][0][0, :1024]
    )
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])
    # the parent directory of cifar-10-batches-py is accepted too
    assert read_dataset("cifar10", tmp_path).x_train.shape == ds.x_train.shape


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_pickle_carrying_code_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    make_cifar_dir(root)
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((4, 3072), np.uint8), b"labels": _Evil(marker)}
    (root / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(PoisonDetectError, match="refus") as err:
        read_dataset("cifar10", root)
    assert str(root / "data_batch_3") in str(err.value)
    assert "system" in str(err.value)
    assert not marker.exists()


def test_cifar10_wrong_content(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    make_cifar_dir(root)
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (root / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(PoisonDetectError, match="3072") as err:
        read_dataset("cifar10", root)
    assert str(root / "test_batch") in str(err.value)

    (root / "data_batch_5").unlink()
    with pytest.raises(PoisonDetectError, match="missing data_batch_5") as err:
        read_dataset("cifar10", root)
    assert FORMATS["cifar10"].description in str(err.value)


# --------------------------------------------------------------------------- image folders


def _expected(pixels: dict, split: str, gray: bool = False) -> np.ndarray:
    keys = sorted(k for k in pixels if k.startswith(split + "/"))
    arrays = [pixels[k] for k in keys]
    if gray:
        return np.stack(arrays)[:, None]
    return np.stack(arrays).transpose(0, 3, 1, 2)


def test_image_folder_directory_and_tarball(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    pixels = make_image_folder(root)
    ds = read_dataset("image_folder", root)
    assert ds.name == "shapes"
    assert ds.classes == ["ant", "cat", "zebra"]
    assert ds.x_train.shape == (9, 3, 6, 6) and ds.x_test.shape == (6, 3, 6, 6)
    np.testing.assert_array_equal(as_uint8(ds.x_train), _expected(pixels, "train"))
    np.testing.assert_array_equal(as_uint8(ds.x_test), _expected(pixels, "test"))
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(ds.y_test, [0, 0, 1, 1, 2, 2])

    archive = tmp_path / "shapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="shapes")  # under one top-level folder
    from_tar = read_dataset("image_folder", archive)
    assert from_tar.name == "shapes" and from_tar.classes == ds.classes
    np.testing.assert_array_equal(from_tar.x_train, ds.x_train)
    np.testing.assert_array_equal(from_tar.y_test, ds.y_test)

    plain = tmp_path / "flat.tar"  # plain tar, no top-level folder, members in reverse order
    with tarfile.open(plain, "w") as tar:
        for file in sorted(root.rglob("*.*"), reverse=True):
            tar.add(file, arcname=file.relative_to(root).as_posix())
    from_plain = read_dataset("image_folder", plain)
    np.testing.assert_array_equal(from_plain.x_train, ds.x_train)
    np.testing.assert_array_equal(from_plain.y_train, ds.y_train)


def test_image_folder_channels_and_resize(tmp_path: Path) -> None:
    pixels = make_image_folder(tmp_path / "gray", mode="L")
    gray = read_dataset("image_folder", tmp_path / "gray")
    assert gray.in_channels == 1
    np.testing.assert_array_equal(as_uint8(gray.x_train), _expected(pixels, "train", gray=True))
    rgb = read_dataset("image_folder", tmp_path / "gray", channels=3)
    assert rgb.x_train.shape == (9, 3, 6, 6)
    np.testing.assert_array_equal(rgb.x_train[:, 1], gray.x_train[:, 0])
    small = read_dataset("image_folder", tmp_path / "gray", image_size=4)
    assert small.x_train.shape == (9, 1, 4, 4) and small.image_size == 4


def test_image_folder_mixed_sizes_and_class_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    make_image_folder(root)
    odd = root / "test" / "cat" / "big.png"
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(odd)
    with pytest.raises(PoisonDetectError, match="image_size") as err:
        read_dataset("image_folder", root)
    assert str(root) in str(err.value) and "test/cat/big.png" in str(err.value)
    assert read_dataset("image_folder", root, image_size=6).x_test.shape == (7, 3, 6, 6)

    (root / "test" / "dog").mkdir()
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "test" / "dog" / "a.png")
    with pytest.raises(PoisonDetectError, match="differ from test classes") as err:
        read_dataset("image_folder", root, image_size=6)
    assert str(root) in str(err.value)


# --------------------------------------------------------------------------- cache


def test_prepare_load_round_trip_with_stratified_subsample(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "mnist", gz=True, n_train=200, n_test=100)
    out = tmp_path / "results" / "mnist.npz"
    written = prepare_dataset("mnist", tmp_path / "mnist", out, max_train=50, max_test=30, seed=4)
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))
    loaded = load_prepared(out)
    assert loaded.name == written.name == "mnist"
    assert loaded.classes == written.classes
    for field in ("x_train", "y_train", "x_test", "y_test"):
        a, b = getattr(written, field), getattr(loaded, field)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert len(loaded.x_train) == 50 and len(loaded.x_test) == 30

    full = read_dataset("mnist", tmp_path / "mnist")
    # the subset is made of original samples, and each class keeps about its share
    rows = {row.tobytes(): y for row, y in zip(full.x_train, full.y_train, strict=True)}
    assert all(rows[r.tobytes()] == y for r, y in zip(loaded.x_train, loaded.y_train, strict=True))
    share = np.bincount(full.y_train, minlength=10) * 50 / 200
    assert np.all(np.abs(np.bincount(loaded.y_train, minlength=10) - share) < 1)

    again = tmp_path / "again.npz"
    prepare_dataset("mnist", tmp_path / "mnist", again, max_train=50, max_test=30, seed=4)
    np.testing.assert_array_equal(load_prepared(again).x_train, loaded.x_train)


def test_prepare_digits_keeps_pixel_scale(tmp_path: Path) -> None:
    out = tmp_path / "digits.npz"
    written = prepare_dataset("digits", None, out)
    with np.load(out) as npz:
        assert npz["x_train"].dtype == np.uint8 and int(npz["pixel_max"]) == 16
    np.testing.assert_array_equal(load_prepared(out).x_train, written.x_train)
    assert written.x_train.max() == 1.0


def test_truncated_cache_is_refused(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "mnist", gz=False)
    out = tmp_path / "mnist.npz"
    prepare_dataset("mnist", tmp_path / "mnist", out)
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(PoisonDetectError, match="delete it and rerun the prepare step") as err:
        load_prepared(out)
    assert str(out) in str(err.value)

    with pytest.raises(PoisonDetectError, match="not found") as err:
        load_prepared(tmp_path / "nope.npz")
    assert "nope.npz" in str(err.value)


# --------------------------------------------------------------------------- bad paths


@pytest.mark.parametrize("fmt", ["mnist", "fashion_mnist", "cifar10", "image_folder"])
def test_missing_directory(tmp_path: Path, fmt: str) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(PoisonDetectError, match="does not exist") as err:
        read_dataset(fmt, missing)
    message = str(err.value)
    assert str(missing) in message and FORMATS[fmt].description in message
    assert "Nothing is downloaded" in message


def test_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "train-images.txt").write_text("hello")
    with pytest.raises(PoisonDetectError, match="missing train-images-idx3-ubyte") as err:
        read_dataset("mnist", tmp_path / "stuff")
    assert str(tmp_path / "stuff") in str(err.value)
    assert FORMATS["mnist"].description in str(err.value)

    flat = tmp_path / "flat"
    (flat / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(flat / "cat" / "a.png")
    with pytest.raises(PoisonDetectError, match="no images under train") as err:
        read_dataset("image_folder", flat)
    assert str(flat) in str(err.value)

    two_tops = tmp_path / "two.tar"
    make_image_folder(tmp_path / "a")
    with tarfile.open(two_tops, "w") as tar:
        tar.add(tmp_path / "a", arcname="one")
        tar.add(tmp_path / "a", arcname="two")
    with pytest.raises(PoisonDetectError, match="several top-level folders") as err:
        read_dataset("image_folder", two_tops)
    assert str(two_tops) in str(err.value)

    not_tar = tmp_path / "data.bin"
    not_tar.write_bytes(b"\x00" * 10)
    with pytest.raises(PoisonDetectError, match="neither a directory nor a tar") as err:
        read_dataset("image_folder", not_tar)
    assert str(not_tar) in str(err.value)


def test_unknown_format_and_missing_path() -> None:
    with pytest.raises(PoisonDetectError, match="known formats: digits, mnist") as err:
        read_dataset("svhn", "/data/svhn")
    assert "cifar10" in str(err.value) and "image_folder" in str(err.value)
    with pytest.raises(PoisonDetectError, match="no path given"):
        read_dataset("mnist", None)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_real_mnist() -> None:
    ds = read_dataset("mnist", REAL_MNIST)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(ds.y_train[:8], [5, 0, 4, 1, 9, 2, 1, 3])
    np.testing.assert_array_equal(
        np.bincount(ds.y_test), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0


# --------------------------------------------------------------------------- a toy format


def test_a_format_added_to_the_table_is_read_prepared_and_validated(tmp_path, monkeypatch):
    """Adding a format is a reader and one entry of the table: read_dataset, prepare_dataset,
    load_prepared, the config check and the layout errors take it from there (no other edit)."""
    from poisondetect import config
    from poisondetect.data import formats
    from poisondetect.data.common import _layout_error, _Raw

    def read_csv_pixels(path: Path, *, limits, seed: int = 0) -> _Raw:
        """Toy: one CSV line per image, "split,label,16 pixels 0..255" (4x4 grey)."""
        rows = [line.split(",") for line in path.read_text().splitlines() if line]
        if not rows or any(len(r) != 18 for r in rows):
            raise _layout_error("csv_pixels", path, "every line needs split, label, 16 pixels")
        parts = {}
        for split in ("train", "test"):
            mine = [r for r in rows if r[0] == split]
            x = np.array([[int(v) for v in r[2:]] for r in mine], np.uint8).reshape(-1, 1, 4, 4)
            parts[split] = (x, np.array([int(r[1]) for r in mine], np.int64))
        return _Raw("toy", "csv_pixels", *parts["train"], *parts["test"], ["a", "b"], 255)

    monkeypatch.setitem(
        formats.FORMATS,
        "csv_pixels",
        formats.DataFormat(read_csv_pixels, "a CSV file: split,label,16 pixels per line"),
    )
    rng = np.random.default_rng(0)
    lines = [
        ",".join([split, str(i % 2), *map(str, rng.integers(0, 256, 16))])
        for split, n in (("train", 10), ("test", 4))
        for i in range(n)
    ]
    (tmp_path / "toy.csv").write_text("\n".join(lines))

    ds = read_dataset("csv_pixels", tmp_path / "toy.csv", channels=3)  # not its option: ignored
    assert ds.x_train.shape == (10, 1, 4, 4) and ds.x_test.shape == (4, 1, 4, 4)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    np.testing.assert_array_equal(ds.y_train, np.arange(10) % 2)
    cached = prepare_dataset("csv_pixels", tmp_path / "toy.csv", tmp_path / "toy.npz", max_train=6)
    loaded = load_prepared(tmp_path / "toy.npz")
    assert len(loaded.y_train) == 6 and loaded.classes == ["a", "b"]
    np.testing.assert_array_equal(loaded.x_train, cached.x_train)
    # its layout errors quote its description; a missing path is refused before the reader runs
    (tmp_path / "bad.csv").write_text("train,0,1\n")
    with pytest.raises(PoisonDetectError, match="a CSV file: split,label,16 pixels per line"):
        read_dataset("csv_pixels", tmp_path / "bad.csv")
    with pytest.raises(PoisonDetectError, match="does not exist"):
        read_dataset("csv_pixels", tmp_path / "missing.csv")
    # the config accepts it (the schema's formats come from the table)
    toy = {"format": "csv_pixels", "path": "toy.csv"}
    cfg = config.validate_config({"datasets": {"digits": {"format": "digits"}, "toy": toy}})
    assert cfg["datasets"]["toy"]["format"] == "csv_pixels"
    with pytest.raises(PoisonDetectError, match="datasets.toy.format"):
        config.validate_config({"datasets": {"toy": {"format": "csv_pixel"}}})
