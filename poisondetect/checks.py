"""Input checks shared by the detectors, the attacks and the stages: one place, one message style.

Each check returns the input in the canonical dtype or raises ``PoisonDetectError`` with a one-line
message naming the argument and the fix.
"""

from __future__ import annotations

import numpy as np

from poisondetect.errors import PoisonDetectError, require_finite


def check_features(X: np.ndarray, name: str = "X") -> np.ndarray:
    """``X`` as float32 ``(N, D)`` or ``(N, C, H, W)``, finite, values in ``[0, 1]``."""
    x = np.asarray(X, dtype=np.float32)
    if x.ndim not in (2, 4):
        raise PoisonDetectError(
            f"{name} must be (N, D) features or (N, C, H, W) images, got shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise PoisonDetectError(f"{name} contains NaN or infinite values")
    if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise PoisonDetectError(
            f"{name} must hold pixels in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]; rescale the data"
        )
    return x


def check_label_vector(y: np.ndarray | None, n: int | None = None, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D array of ``n`` labels (any length when ``n`` is None) of any values (for
    detectors that compare labels for equality rather than index by them)."""
    if y is None:
        raise PoisonDetectError(f"{name} is required: this detector uses the labels")
    arr = np.asarray(y)
    if arr.ndim != 1 or (n is not None and arr.shape != (n,)):
        want = f"({n},) to match X" if n is not None else "(N,)"
        raise PoisonDetectError(f"{name} must have shape {want}, got {arr.shape}")
    return arr


def check_labels(
    y: np.ndarray | None, n: int | None = None, n_classes: int = 2, name: str = "y"
) -> np.ndarray:
    """``y`` as int64 ``(n,)`` (any length when ``n`` is None) with values in ``[0, n_classes)``."""
    arr = check_label_vector(y, n, name)
    if arr.size and (
        not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0 or arr.max() >= n_classes
    ):
        hint = " (map the two classes first, e.g. with make_rounds)" if n_classes == 2 else ""
        raise PoisonDetectError(
            f"{name}: labels must be 0/1{hint}, found {np.unique(arr)[:5].tolist()}"
            if n_classes == 2
            else f"{name} must hold integer labels in [0, {n_classes}), got {np.unique(arr)[:5]}"
        )
    return arr.astype(np.int64)


def check_xy(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D feature matrix and its 0/1 labels, one per row (the attacks' and rounds' inputs)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise PoisonDetectError(f"{name}: features must be 2-D (N, D), got shape {x.shape}")
    y = check_labels(y, None, 2, name)
    if y.shape != (x.shape[0],):
        raise PoisonDetectError(f"{name}: {x.shape[0]} feature rows but labels shaped {y.shape}")
    return x, y


def check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    """``scores`` as a finite 1-D float64 array."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise PoisonDetectError(f"{name} must be 1-D (one score per point), got shape {s.shape}")
    # Fail closed: a NaN is never above (or below) any threshold, so it would pass as clean.
    return require_finite(
        s,
        name,
        "the detector's input or its training diverged; check the data and the detector settings",
        "points",
    )


def check_fitted(obj: object, attr: str) -> None:
    """``obj`` has the fitted attribute ``attr`` (scikit-learn style, ending in ``_``)."""
    if not hasattr(obj, attr):
        raise PoisonDetectError(f"{type(obj).__name__} is not fitted yet; call fit(X, y) first")


def check_int(name: str, value, minimum: int) -> None:
    """``value`` an integer (not a bool) of at least ``minimum``; the message names ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise PoisonDetectError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(name: str, value, low: float, high: float | None = None, *, closed=False) -> None:
    """``value`` a number above ``low`` (at least ``low`` if ``closed``), at most ``high``."""
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    ok = ok and (value >= low if closed else value > low) and (high is None or value <= high)
    if not ok:
        span = f">= {low}" if closed else f"> {low}"
        span = f"in ({low}, {high}]" if high is not None else span
        raise PoisonDetectError(f"{name} must be a number {span}, got {value!r}")
