"""Periodic-update rounds for the sample-level part (Razmi & Xiong).

Each round is a new batch of data for a binary task: a class-balanced training set and validation
set drawn from the training pool (disjoint within the round) and a class-balanced test set drawn from
the test pool. Rounds are drawn independently of each other, so a point may recur in several rounds
(needed for small data sets such as sklearn's digits, where 60 rounds of 300 points exceed the
pool). Round ``r`` depends only on ``(seed, r)``, not on ``n_rounds``.

Features are flattened ``float32`` vectors in ``[0, 1]`` (the caller flattens images); the two
chosen classes ``(a, b)`` are mapped to labels 0 (class ``a``) and 1 (class ``b``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path

_ARRAYS = (
    "x_train",
    "y_train",
    "x_val",
    "y_val",
    "x_test",
    "y_test",
    "idx_train",
    "idx_val",
    "idx_test",
)


@dataclass
class Rounds:
    """Arrays of all rounds: ``x_*`` are ``(n_rounds, n, D)`` float32, ``y_*`` ``(n_rounds, n)``
    int64 in {0, 1}; ``idx_*`` are the rows of the pool each point came from (train and val index
    the training pool, test the test pool); ``classes`` are the original labels mapped to 0 and 1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    idx_train: np.ndarray
    idx_val: np.ndarray
    idx_test: np.ndarray
    classes: tuple[int, int]
    seed: int

    @property
    def n_rounds(self) -> int:
        return int(self.x_train.shape[0])

    def save(self, path: str | Path) -> None:
        """Write all arrays to one ``.npz`` file, atomically."""
        with atomic_path(path) as tmp:
            np.savez(
                tmp,
                **{name: getattr(self, name) for name in _ARRAYS},
                classes=np.asarray(self.classes, dtype=np.int64),
                seed=np.asarray(self.seed, dtype=np.int64),
            )

    @classmethod
    def load(cls, path: str | Path) -> Rounds:
        """Read a file written by :meth:`save`; a missing or corrupt file raises a clear error."""
        path = Path(path)
        if not path.is_file():
            raise PoisonDetectError(f"{path}: rounds file not found; run the rule that makes it")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in _ARRAYS}
                classes = tuple(int(c) for c in z["classes"])
                seed = int(z["seed"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise PoisonDetectError(
                f"{path}: not a valid rounds file ({type(e).__name__}: {e}); delete it and rerun"
                " the job that writes it"
            ) from e
        if len(classes) != 2:
            raise PoisonDetectError(
                f"{path}: expected 2 classes, found {classes}; delete it and rerun"
            )
        return cls(**arrays, classes=(classes[0], classes[1]), seed=seed)


def _balanced(n: int) -> tuple[int, int]:
    """Points of class 0 and class 1 in a set of ``n`` (the odd one goes to class 1)."""
    return n // 2, n - n // 2


def _check_pool(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise PoisonDetectError(
            f"{name}: features must be 2-D (N, D), got shape {x.shape}; flatten the images first"
        )
    if y.shape != (x.shape[0],):
        raise PoisonDetectError(
            f"{name}: {x.shape[0]} feature rows but labels shaped {y.shape}; they must match"
        )
    return x.astype(np.float32, copy=False), y


def make_rounds(
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_test_pool: np.ndarray,
    y_test_pool: np.ndarray,
    classes: tuple[int, int],
    n_rounds: int = 60,
    n_train: int = 100,
    n_val: int = 200,
    n_test: int = 200,
    seed: int = 0,
) -> Rounds:
    """Draw ``n_rounds`` class-balanced (train, validation, test) splits for classes ``(a, b)``."""
    x_pool, y_pool = _check_pool(x_pool, y_pool, "training pool")
    x_test_pool, y_test_pool = _check_pool(x_test_pool, y_test_pool, "test pool")
    if x_pool.shape[1] != x_test_pool.shape[1]:
        raise PoisonDetectError(
            f"training pool has {x_pool.shape[1]} features but test pool {x_test_pool.shape[1]}"
        )
    if len(classes) != 2 or classes[0] == classes[1]:
        raise PoisonDetectError(f"classes must be two different labels (a, b), got {classes}")
    for name, value in (("n_rounds", n_rounds), ("n_train", n_train), ("n_val", n_val)):
        if int(value) < 1:
            raise PoisonDetectError(f"{name} must be >= 1, got {value}")
    if int(n_test) < 0 or int(seed) < 0:
        raise PoisonDetectError(f"n_test and seed must be >= 0, got n_test={n_test}, seed={seed}")

    need_pool = [t + v for t, v in zip(_balanced(n_train), _balanced(n_val), strict=True)]
    need_test = list(_balanced(n_test))
    members_pool, members_test = [], []
    for k, c in enumerate(classes):
        in_pool = np.flatnonzero(y_pool == c)
        in_test = np.flatnonzero(y_test_pool == c)
        if in_pool.size < need_pool[k]:
            raise PoisonDetectError(
                f"class {c}: a round needs {need_pool[k]} training-pool points (train + validation)"
                f" but the pool has {in_pool.size}; lower n_train / n_val"
            )
        if in_test.size < need_test[k]:
            raise PoisonDetectError(
                f"class {c}: a round needs {need_test[k]} test points but the test pool has"
                f" {in_test.size}; lower n_test"
            )
        members_pool.append(in_pool)
        members_test.append(in_test)

    idx_train, idx_val, idx_test = [], [], []
    n_tr = _balanced(n_train)
    for r in range(n_rounds):
        rng = np.random.default_rng([seed, r])
        tr, va, te = [], [], []
        for k in range(2):
            chosen = rng.choice(members_pool[k], size=need_pool[k], replace=False)
            tr.append(chosen[: n_tr[k]])
            va.append(chosen[n_tr[k] :])
            te.append(rng.choice(members_test[k], size=need_test[k], replace=False))
        idx_train.append(rng.permutation(np.concatenate(tr)))
        idx_val.append(rng.permutation(np.concatenate(va)))
        idx_test.append(rng.permutation(np.concatenate(te)))
    idx_train_a = np.stack(idx_train).astype(np.int64)
    idx_val_a = np.stack(idx_val).astype(np.int64)
    idx_test_a = np.stack(idx_test).astype(np.int64).reshape(n_rounds, n_test)

    def labels(y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return (y[idx] == classes[1]).astype(np.int64)

    return Rounds(
        x_train=x_pool[idx_train_a],
        y_train=labels(y_pool, idx_train_a),
        x_val=x_pool[idx_val_a],
        y_val=labels(y_pool, idx_val_a),
        x_test=x_test_pool[idx_test_a],
        y_test=labels(y_test_pool, idx_test_a),
        idx_train=idx_train_a,
        idx_val=idx_val_a,
        idx_test=idx_test_a,
        classes=(int(classes[0]), int(classes[1])),
        seed=int(seed),
    )
