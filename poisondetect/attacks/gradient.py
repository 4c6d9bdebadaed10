"""The gradient of the optimal poisoning attack on an SVM (Biggio et al., 2012): the derivative of
the validation hinge loss with respect to a poison point, through the KKT conditions of the
(linear or RBF) SVM retrained with it, and the projected steps that follow it. Used by
``attacks.svm`` for the optimal and semi-optimal poisons."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist
from sklearn import config_context
from sklearn.svm import SVC

from poisondetect.checks import check_xy
from poisondetect.errors import PoisonDetectError

log = logging.getLogger(__name__)

_PASS_THROUGH = ("C", "tol", "max_iter", "shrinking", "cache_size", "random_state")
_KERNEL_KEYS = ("kernel", "gamma")
# SVC arguments without effect on a linear / RBF decision function: accepted and ignored.
_IGNORED = ("degree", "coef0", "probability", "decision_function_shape", "break_ties", "verbose")


@dataclass(frozen=True)
class Kernel:
    """A linear or RBF kernel with the derivatives the attack needs."""

    name: str
    gamma: float = 1.0

    def gram(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Kernel matrix ``K[i, j] = k(a_i, b_j)``."""
        if self.name == "linear":
            return a @ b.T
        return np.exp(-self.gamma * cdist(a, b, "sqeuclidean"))

    def weighted_grad(
        self, weights: np.ndarray, rows: np.ndarray, z: np.ndarray, k_rows_z: np.ndarray
    ) -> np.ndarray:
        """``sum_i weights_i * d k(rows_i, z) / dz`` (shape ``(D,)``); ``k_rows_z = k(rows, z)``."""
        if self.name == "linear":
            return weights @ rows
        wk = weights * k_rows_z
        return 2.0 * self.gamma * (wk @ rows - wk.sum() * z)

    def grad_self(self, z: np.ndarray) -> np.ndarray:
        """Total derivative ``d k(z, z) / dz``."""
        if self.name == "linear":
            return 2.0 * z
        return np.zeros_like(z)


def _pm(y01: np.ndarray) -> np.ndarray:
    """0/1 labels -> -1/+1 (float)."""
    return np.where(np.asarray(y01) == 1, 1.0, -1.0)


def resolve_svm(svm_params: Mapping[str, Any], x_tr: np.ndarray) -> tuple[Kernel, dict[str, Any]]:
    """Split ``SVC`` keyword arguments into the kernel and the arguments of a precomputed SVC."""
    allowed = _PASS_THROUGH + _KERNEL_KEYS + _IGNORED
    unknown = sorted(set(svm_params) - set(allowed))
    if unknown:
        raise PoisonDetectError(
            f"svm_params: unsupported key(s) {unknown} for the SVM attacks; allowed: {sorted(allowed)}"
        )
    params = {k: v for k, v in svm_params.items() if k not in _IGNORED}
    name = params.pop("kernel", "rbf")
    gamma = params.pop("gamma", "scale")
    if name == "linear":
        kernel = Kernel("linear")
    elif name == "rbf":
        n_features = x_tr.shape[1]
        if gamma == "scale":
            var = float(np.var(x_tr))
            gamma = 1.0 / (n_features * var) if var > 0 else 1.0
        elif gamma == "auto":
            gamma = 1.0 / n_features
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or gamma <= 0:
            raise PoisonDetectError(
                f"svm_params.gamma must be > 0, 'scale' or 'auto', got {gamma!r}"
            )
        kernel = Kernel("rbf", float(gamma))
    else:
        raise PoisonDetectError(
            f"svm_params.kernel: {name!r} is not supported by the SVM attacks; use 'linear' or 'rbf'"
        )
    if float(params.get("C", 1.0)) <= 0:
        raise PoisonDetectError(f"svm_params.C must be > 0, got {params['C']!r}")
    return kernel, params


def _fit_precomputed(K: np.ndarray, y01: np.ndarray, svc_kwargs: Mapping[str, Any]) -> tuple:
    """Fit a precomputed-kernel SVC; return signed dual coefficients (one per point) and bias."""
    # the inputs are checked once by the caller; skip sklearn's per-fit validation overhead
    with config_context(skip_parameter_validation=True, assume_finite=True):
        svc = SVC(kernel="precomputed", **svc_kwargs).fit(K, y01)
    a = np.zeros(len(y01))
    a[svc.support_] = svc.dual_coef_[0]
    return a, float(svc.intercept_[0])


def _hinge_and_gradient(
    kernel: Kernel,
    x: np.ndarray,
    K: np.ndarray,
    a: np.ndarray,
    b: float,
    C: float,
    c: int,
    x_val: np.ndarray,
    y_val_pm: np.ndarray,
    K_val: np.ndarray,
) -> tuple[float, np.ndarray]:
    """Mean validation hinge loss and its gradient w.r.t. the features of training point ``c``.

    ``x`` (n, D) training set, ``K`` its kernel matrix, ``a`` signed dual coefficients
    (``alpha_i y_i``), ``b`` the bias, ``K_val`` (m, n) kernel between validation and training.
    """
    margins = 1.0 - y_val_pm * (K_val @ a + b)
    objective = float(np.mean(np.maximum(margins, 0.0)))
    grad = np.zeros(x.shape[1])
    a_c = a[c]
    if a_c == 0.0:  # not a support vector: the solution does not depend on x_c locally
        return objective, grad
    z = x[c]
    # dL/df_k for each validation point.
    w = np.where(margins > 0.0, -y_val_pm, 0.0) / len(y_val_pm)
    # Direct term: x_c moves the validation scores through k(x_k, x_c) with a_c fixed.
    grad += a_c * kernel.weighted_grad(w, x_val, z, K_val[:, c])

    # Indirect term: the margin support vectors' coefficients and the bias adapt (KKT).
    margin = np.flatnonzero((a != 0.0) & (np.abs(a) < C * (1.0 - 1e-9)))
    if margin.size == 0:
        return objective, grad
    s = margin.size
    M = np.zeros((s + 1, s + 1))
    M[:s, :s] = K[np.ix_(margin, margin)]
    M[:s, s] = 1.0
    M[s, :s] = 1.0
    rhs = np.append(K_val[:, margin].T @ w, w.sum())
    u = np.linalg.lstsq(M, rhs, rcond=None)[0][:s]  # adjoint: M is symmetric
    # d/dx_c of the margin conditions sum_j a_j k(x_i, x_j) + b = y_i, at fixed coefficients.
    others = margin != c
    rows = margin[others]
    grad -= a_c * kernel.weighted_grad(u[others], x[rows], z, K[rows, c])
    if not others.all():  # the poison itself is a margin support vector
        sv = np.flatnonzero((a != 0.0) & (np.arange(len(a)) != c))
        r_c = kernel.weighted_grad(a[sv], x[sv], z, K[sv, c]) + a_c * kernel.grad_self(z)
        grad -= u[~others][0] * r_c
    return objective, grad


def validation_hinge_gradient(
    svc_or_params: SVC | Mapping[str, Any],
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    poison_index: int,
    x_val: np.ndarray,
    y_val: np.ndarray,
) -> tuple[float, np.ndarray]:
    """Mean hinge loss on ``(x_val, y_val)`` of the SVM trained on ``(x_tr, y_tr)`` and its gradient
    w.r.t. ``x_tr[poison_index]`` (through the KKT conditions).

    ``svc_or_params`` is either an ``SVC`` already fitted on exactly ``(x_tr, y_tr)`` (linear or RBF
    kernel) or the ``SVC`` keyword arguments, in which case the SVM is fitted here.
    """
    x_tr, y_tr = check_xy(x_tr, y_tr, "training set")
    x_val, y_val = check_xy(x_val, y_val, "validation set")
    x = np.asarray(x_tr, dtype=np.float64)
    xv = np.asarray(x_val, dtype=np.float64)
    if not 0 <= poison_index < len(x):
        raise PoisonDetectError(f"poison_index {poison_index} outside the training set of {len(x)}")
    if isinstance(svc_or_params, SVC):
        svc = svc_or_params
        if not hasattr(svc, "support_"):
            raise PoisonDetectError("the SVC passed to validation_hinge_gradient is not fitted")
        if svc.kernel not in ("linear", "rbf") or svc.class_weight is not None:
            raise PoisonDetectError(
                "validation_hinge_gradient supports linear / RBF SVCs without class weights"
            )
        if list(svc.classes_) != [0, 1] or svc.shape_fit_ != x.shape:
            raise PoisonDetectError(
                "the SVC must be fitted on exactly (x_tr, y_tr) with labels 0/1"
            )
        kernel, _ = resolve_svm({"kernel": svc.kernel, "gamma": svc.gamma}, x)
        K = kernel.gram(x, x)
        a = np.zeros(len(x))
        a[svc.support_] = svc.dual_coef_[0]
        b = float(svc.intercept_[0])
        C = float(svc.C)
    else:
        kernel, svc_kwargs = resolve_svm(svc_or_params, x)
        K = kernel.gram(x, x)
        a, b = _fit_precomputed(K, y_tr, svc_kwargs)
        C = float(svc_kwargs.get("C", 1.0))
    return _hinge_and_gradient(
        kernel, x, K, a, b, C, poison_index, xv, _pm(y_val), kernel.gram(xv, x)
    )


class _PoisonedSet:
    """Training set growing by one poison at a time, with cached kernel matrices."""

    def __init__(self, kernel, svc_kwargs, x_tr, y_tr, x_val, y_val, capacity: int) -> None:
        self.kernel = kernel
        self.svc_kwargs = svc_kwargs
        self.C = float(svc_kwargs.get("C", 1.0))
        n, d = x_tr.shape
        self.n = n
        self.x = np.zeros((capacity, d))
        self.x[:n] = x_tr
        self.y = np.zeros(capacity, dtype=np.int64)
        self.y[:n] = y_tr
        self.K = np.zeros((capacity, capacity))
        self.K[:n, :n] = kernel.gram(self.x[:n], self.x[:n])
        self.x_val = np.asarray(x_val, dtype=np.float64)
        self.y_val_pm = _pm(y_val)
        self.K_val = np.zeros((len(x_val), capacity))
        self.K_val[:, :n] = kernel.gram(self.x_val, self.x[:n])

    def append(self, z: np.ndarray, label: int) -> int:
        self.n += 1
        self.y[self.n - 1] = label
        self.set_point(self.n - 1, z)
        return self.n - 1

    def set_point(self, c: int, z: np.ndarray) -> None:
        n = self.n
        self.x[c] = z
        k = self.kernel.gram(z[None, :], self.x[:n])[0]
        self.K[c, :n] = k
        self.K[:n, c] = k
        self.K_val[:, c] = self.kernel.gram(self.x_val, z[None, :])[:, 0]

    def objective_and_gradient(self, c: int) -> tuple[float, np.ndarray]:
        n = self.n
        K = self.K[:n, :n]
        a, b = _fit_precomputed(K, self.y[:n], self.svc_kwargs)
        return _hinge_and_gradient(
            self.kernel,
            self.x[:n],
            K,
            a,
            b,
            self.C,
            c,
            self.x_val,
            self.y_val_pm,
            self.K_val[:, :n],
        )


def _optimise_last(
    state: _PoisonedSet, step: float, max_iter: int, tol: float, box: tuple[float, float]
) -> tuple[np.ndarray, int, float, float]:
    """Projected gradient ascent on the last point of ``state``; leaves the best point in place.

    Returns (best point, iterations, start objective, best objective).
    """
    c = state.n - 1
    obj, grad = state.objective_and_gradient(c)
    start_obj = best_obj = obj
    best = state.x[c].copy()
    iters = 0
    while iters < max_iter:
        norm = np.linalg.norm(grad)
        if not np.isfinite(norm) or norm == 0.0:
            break
        z = np.clip(state.x[c] + step * grad / norm, box[0], box[1])
        if np.array_equal(z, state.x[c]):  # the projection cancels the step
            break
        iters += 1
        state.set_point(c, z)
        new_obj, grad = state.objective_and_gradient(c)
        if new_obj > best_obj:
            best_obj, best = new_obj, z.copy()
        if new_obj - obj < tol:  # changed by < tol, or decreased
            break
        obj = new_obj
    if not np.array_equal(state.x[c], best):
        state.set_point(c, best)
    return best, iters, start_obj, best_obj
