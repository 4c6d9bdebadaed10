"""scikit-learn's bundled 8x8 digits (no file: ``path`` is ignored); it has no official split, so
the test split is a seeded stratified share."""

from __future__ import annotations

import numpy as np

from poisondetect.data.common import _Raw
from poisondetect.errors import PoisonDetectError
from poisondetect.seeds import stratified_subset


def read_digits(path=None, *, limits=None, test_fraction: float = 0.25, seed: int = 0) -> _Raw:
    from sklearn.datasets import load_digits

    if not 0 < test_fraction < 1:
        raise PoisonDetectError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    y = bunch.target.astype(np.int64)
    test = np.zeros(len(y), dtype=bool)
    n_test = round(len(y) * test_fraction)
    test[stratified_subset(y, n_test, np.random.default_rng(seed))] = True
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
