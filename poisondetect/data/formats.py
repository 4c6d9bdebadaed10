"""The data formats: one table from a format's name (the config's ``datasets.<name>.format``) to
its reader, the layout it expects and what is known about it before reading.

``poisondetect.names.DATA_FORMATS`` (the list the workflow and the command line know), the
config's format check (``config.validate_config``), the plan-time class checks and the readers'
layout errors all come from this table. Adding a format is a reader module in this package, one
entry here and the format's enum entry (and any options) in the dataset block of
``poisondetect/schemas/config.schema.yaml``.

A reader is ``read(path, *, limits, **options) -> common._Raw`` (uint8 pixels, labels, class names,
the pixel value that maps to 1.0); it takes ``fmt`` too if it serves several formats, and any of
the reader options (``channels``, ``image_size``, ``test_fraction``, ``seed``) it uses: it gets
exactly the ones its signature names. It reads through ``poisondetect.limits`` and raises
``common._layout_error`` for a file that is not as described. Nothing here imports a reader: the
workflow plans with this table.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

IDX_FILES = (
    "a directory holding the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each plain or .gz)"
)


@dataclass(frozen=True)
class DataFormat:
    reader: str | Callable  # "module:function", imported when a data set is read, or a function
    description: str  # the layout expected (quoted by the layout errors)
    needs_path: bool = True  # False: the data ship with a library (digits)
    classes: int | None = None  # a fixed number of classes: class indices checked at plan time

    def read_function(self) -> Callable:
        if callable(self.reader):
            return self.reader
        module, _, name = self.reader.partition(":")
        return getattr(importlib.import_module(module), name)

    def read(self, fmt: str, path, limits, options: dict):
        """Call the reader with the options its signature names (``fmt`` among them)."""
        read = self.read_function()
        accepted = inspect.signature(read).parameters
        given = {"fmt": fmt, **options}
        return read(path, limits=limits, **{k: v for k, v in given.items() if k in accepted})


FORMATS: dict[str, DataFormat] = {
    "digits": DataFormat(
        "poisondetect.data.digits:read_digits",
        "scikit-learn's bundled 8x8 handwritten digits (sklearn.datasets.load_digits); no path "
        "needed",
        needs_path=False,
        classes=10,
    ),
    "mnist": DataFormat(
        "poisondetect.data.idx:read_idx_dataset",
        f"{IDX_FILES}, as in the original MNIST distribution",
        classes=10,
    ),
    "fashion_mnist": DataFormat(
        "poisondetect.data.idx:read_idx_dataset",
        f"{IDX_FILES}, e.g. /usr/share/datasets/fashion-mnist from Debian's "
        "dataset-fashion-mnist package",
        classes=10,
    ),
    "cifar10": DataFormat(
        "poisondetect.data.cifar:read_cifar10",
        "the extracted cifar-10-batches-py directory (data_batch_1 ... data_batch_5, test_batch "
        "and batches.meta, from cifar-10-python.tar.gz)",
        classes=10,
    ),
    "image_folder": DataFormat(
        "poisondetect.data.image_folder:read_image_folder",
        "a directory, or a .tar / .tar.gz archive of it (optionally under one top-level folder), "
        "holding train/<class>/<image> and test/<class>/<image> (png, jpg, jpeg or bmp); classes "
        "are the sorted folder names, the same for train and test",
    ),
}
