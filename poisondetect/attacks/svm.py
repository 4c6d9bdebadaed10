"""Sample-level poisoning attacks on a binary SVM (Razmi & Xiong; Biggio, Nelson & Laskov 2012).

Every attack ADDS new points to a round's training set and returns them as ``(x_poison,
y_poison)``. Labels are 0/1 outside this module; the SVM math uses -1/+1 (label 1 -> +1).

- ``flip``: copies of random training points with flipped labels (features untouched).
- ``optimal``: Biggio et al.'s gradient ascent. A poison starts from a random training point with
  its label flipped (plus uniform noise in ``[-noise, noise]``, clipped to the box) and its features
  are moved to maximise the mean hinge loss of the retrained SVM on the validation set.
- ``semi_optimal``: the same optimisation, started from a random validation point with its true
  label (the label is kept).
  Both are ``gradient_attack`` with its two parameters, the source pool and the label rule.
- ``mixed``: a third of each (flip, optimal, semi-optimal; the remainder goes to the kinds in that
  order). The parts are made in that order, each with the earlier poisons in the training set.

The gradient of the validation loss w.r.t. the poison's features goes through the KKT conditions of
the SVM solution: the margin support vectors stay on the margin (``y_i f(x_i) = 1``), bounded ones
keep ``alpha = C``, and ``sum_i alpha_i y_i = 0`` holds. It is exact for as long as the sets of
margin / bounded / other points do not change. A poison that is not a support vector has zero
gradient, so its optimisation stops at once (as in the original attack). Poisons are optimised one
at a time in one pass; each later poison sees the earlier ones in the training set.

Kernels: ``linear`` and ``rbf``. The SVM is refitted with scikit-learn's ``SVC`` on a precomputed
kernel matrix, of which only the poison's row and column change between iterations. For
``gamma="scale"`` / ``"auto"`` the numeric gamma is resolved once on the clean training set and kept
fixed during the attack.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from poisondetect.attacks.gradient import (
    _optimise_last,
    _PoisonedSet,
    resolve_svm,
)
from poisondetect.checks import check_xy
from poisondetect.errors import PoisonDetectError
from poisondetect.names import SAMPLE_ATTACKS

log = logging.getLogger(__name__)

KINDS = SAMPLE_ATTACKS
ATTACK_OPTIONS = ("step", "max_iter", "tol", "box", "noise")


def _check_options(step: float, max_iter: int, tol: float, box: tuple[float, float], noise: float):
    lo, hi = float(box[0]), float(box[1])
    if not lo < hi:
        raise PoisonDetectError(f"box must be (low, high) with low < high, got {box}")
    if step <= 0 or max_iter < 0 or noise < 0:
        raise PoisonDetectError(
            f"attack options need step > 0, max_iter >= 0, noise >= 0; got step={step},"
            f" max_iter={max_iter}, noise={noise}"
        )
    return lo, hi


def _check_n(n_poison: int) -> int:
    if int(n_poison) != n_poison or n_poison < 0:
        raise PoisonDetectError(f"n_poison must be a non-negative integer, got {n_poison!r}")
    return int(n_poison)


def _choose(n_pool: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` starting points (without replacement while the pool is large enough)."""
    return rng.choice(n_pool, size=n, replace=n > n_pool)


def _sources(
    sources: np.ndarray | None, n_pool: int, n: int, rng: np.random.Generator, pool: str
) -> np.ndarray:
    """Given starting-point indices (checked) or ``n`` drawn from ``rng``."""
    if sources is None:
        return _choose(n_pool, n, rng)
    src = np.asarray(sources)
    if (
        src.shape != (n,)
        or not np.issubdtype(src.dtype, np.integer)
        or (src < 0).any()
        or (src >= n_pool).any()
    ):
        raise PoisonDetectError(
            f"sources must be {n} integer indices into the {pool} set of {n_pool} points"
        )
    return src


def _gradient_poisons(
    x_base: np.ndarray,
    y_base: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_start: np.ndarray,
    y_start: np.ndarray,
    svm_params: Mapping[str, Any],
    rng: np.random.Generator,
    step: float,
    max_iter: int,
    tol: float,
    box: tuple[float, float],
    noise: float,
    what: str,
) -> np.ndarray:
    """Optimise poisons starting at ``x_start`` (labels ``y_start``), one at a time, one pass."""
    lo, hi = _check_options(step, max_iter, tol, box, noise)
    if len(np.unique(y_base)) < 2:
        raise PoisonDetectError("the training set must contain both classes (labels 0 and 1)")
    kernel, svc_kwargs = resolve_svm(svm_params, x_base)
    n_poison, d = x_start.shape
    start = np.clip(x_start + rng.uniform(-noise, noise, size=(n_poison, d)), lo, hi)
    state = _PoisonedSet(kernel, svc_kwargs, x_base, y_base, x_val, y_val, len(x_base) + n_poison)
    out = np.empty((n_poison, d))
    for i in range(n_poison):
        state.append(start[i], int(y_start[i]))
        out[i], iters, obj0, obj1 = _optimise_last(state, step, max_iter, tol, (lo, hi))
        log.debug(
            "%s poison %d/%d: %d iterations, hinge %.4f -> %.4f",
            what,
            i + 1,
            n_poison,
            iters,
            obj0,
            obj1,
        )
    return out


def _out_dtype(x: np.ndarray) -> np.dtype:
    return (
        np.result_type(x.dtype, np.float32)
        if np.issubdtype(x.dtype, np.floating)
        else np.dtype(np.float32)
    )


def flip_attack(
    x_tr: np.ndarray, y_tr: np.ndarray, n_poison: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``n_poison`` random training points with flipped labels."""
    x_tr, y_tr = check_xy(x_tr, y_tr, "training set")
    src = _choose(len(x_tr), _check_n(n_poison), rng)
    return x_tr[src].astype(_out_dtype(x_tr)), 1 - y_tr[src]


SOURCE_POOLS = ("training", "validation")
LABEL_RULES = ("flip", "keep")


def gradient_attack(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_poison: int,
    svm_params: Mapping[str, Any],
    rng: np.random.Generator,
    *,
    source: str = "training",
    labels: str = "flip",
    step: float = 0.25,
    max_iter: int = 100,
    tol: float = 1e-6,
    box: tuple[float, float] = (0.0, 1.0),
    noise: float = 1e-3,
    sources: np.ndarray | None = None,
    base: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The one gradient attack (Biggio et al., 2012): poisons start at points of the ``source``
    pool (``"training"`` or ``"validation"``) with labels by the ``labels`` rule (``"flip"`` or
    ``"keep"``), and their features are moved to maximise the validation hinge loss.

    ``optimal_attack`` = training points, labels flipped; ``semi_optimal_attack`` = validation
    points, true labels kept. ``sources`` (optional) are the indices of the starting points in the
    pool; drawn from ``rng`` (without replacement while there are enough points) when not given.
    ``base`` is the training set the poisons are optimised against (default ``(x_tr, y_tr)``; the
    mixed attack passes the clean points plus the earlier poisons).
    """
    if source not in SOURCE_POOLS or labels not in LABEL_RULES:
        raise PoisonDetectError(
            f"source must be one of {SOURCE_POOLS} and labels one of {LABEL_RULES}, got"
            f" {source!r}, {labels!r}"
        )
    x_tr, y_tr = check_xy(x_tr, y_tr, "training set")
    x_val, y_val = check_xy(x_val, y_val, "validation set")
    x_pool, y_pool = (x_tr, y_tr) if source == "training" else (x_val, y_val)
    src = _sources(sources, len(x_pool), _check_n(n_poison), rng, source)
    y_p = 1 - y_pool[src] if labels == "flip" else y_pool[src].copy()
    x_base, y_base = base if base is not None else (x_tr, y_tr)
    x_p = _gradient_poisons(
        np.asarray(x_base, np.float64),
        y_base,
        x_val,
        y_val,
        x_pool[src].astype(np.float64),
        y_p,
        svm_params,
        rng,
        step=step,
        max_iter=max_iter,
        tol=tol,
        box=box,
        noise=noise,
        what=f"{source}-point/{labels}-label",
    )
    return x_p.astype(_out_dtype(x_tr)), y_p


optimal_attack = partial(gradient_attack, source="training", labels="flip")
optimal_attack.__doc__ = "Biggio et al. (2012) poisons: random training points, labels flipped."
semi_optimal_attack = partial(gradient_attack, source="validation", labels="keep")
semi_optimal_attack.__doc__ = "Poisons started from random validation points with TRUE labels."


def mixed_split(n_poison: int) -> dict[str, int]:
    """How many poisons of each kind a mixed attack makes (remainder to flip, then optimal)."""
    n = _check_n(n_poison)
    kinds = ("flip", "optimal", "semi_optimal")
    return {k: n // 3 + (1 if i < n % 3 else 0) for i, k in enumerate(kinds)}


def mixed_attack(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_poison: int,
    svm_params: Mapping[str, Any],
    rng: np.random.Generator,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A third each of flip, optimal and semi-optimal poisons; returns also each poison's kind.

    The parts are made in that order; the optimised ones see the earlier poisons in the training set.
    """
    x_tr, y_tr = check_xy(x_tr, y_tr, "training set")
    opts = _attack_options(options)
    counts = mixed_split(n_poison)
    x_f, y_f = flip_attack(x_tr, y_tr, counts["flip"], rng)
    x_base = np.concatenate([x_tr, x_f]).astype(np.float64)
    y_base = np.concatenate([y_tr, y_f])
    x_o, y_o = optimal_attack(
        x_tr, y_tr, x_val, y_val, counts["optimal"], svm_params, rng, base=(x_base, y_base), **opts
    )
    x_base = np.concatenate([x_base, x_o])
    y_base = np.concatenate([y_base, y_o])
    x_s, y_s = semi_optimal_attack(
        x_tr,
        y_tr,
        x_val,
        y_val,
        counts["semi_optimal"],
        svm_params,
        rng,
        base=(x_base, y_base),
        **opts,
    )
    kinds = np.array(
        ["flip"] * counts["flip"]
        + ["optimal"] * counts["optimal"]
        + ["semi_optimal"] * counts["semi_optimal"],
        dtype="<U12",
    )
    return np.concatenate([x_f, x_o, x_s]), np.concatenate([y_f, y_o, y_s]), kinds


def _attack_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(ATTACK_OPTIONS))
    if unknown:
        raise PoisonDetectError(
            f"unknown attack option(s) {unknown}; allowed: {list(ATTACK_OPTIONS)}"
        )
    opts: dict[str, Any] = dict(step=0.25, max_iter=100, tol=1e-6, box=(0.0, 1.0), noise=1e-3)
    opts.update(options)
    opts["box"] = tuple(opts["box"])
    return opts


def poison(
    kind: str,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_poison: int,
    svm_params: Mapping[str, Any],
    seed: int,
    **attack_options: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Append ``n_poison`` poisons of ``kind`` to the training set.

    Returns ``(x_all, y_all, is_poison, poison_kind)``: the clean points first, then the poisons;
    ``poison_kind`` is ``"clean"`` or the poison's kind (``flip`` / ``optimal`` / ``semi_optimal``).
    ``attack_options`` (step, max_iter, tol, box, noise) apply to the optimised kinds.
    """
    if kind not in KINDS:
        raise PoisonDetectError(f"unknown attack kind {kind!r}; choose one of {list(KINDS)}")
    x_tr, y_tr = check_xy(x_tr, y_tr, "training set")
    x_val, y_val = check_xy(x_val, y_val, "validation set")
    n = _check_n(n_poison)
    opts = _attack_options(attack_options)
    rng = np.random.default_rng(seed)
    if n == 0:
        x_p, y_p, kinds = x_tr[:0], y_tr[:0], np.empty(0, dtype="<U12")
    elif kind == "flip":
        x_p, y_p = flip_attack(x_tr, y_tr, n, rng)
        kinds = np.full(n, "flip", dtype="<U12")
    elif kind == "optimal":
        x_p, y_p = optimal_attack(x_tr, y_tr, x_val, y_val, n, svm_params, rng, **opts)
        kinds = np.full(n, "optimal", dtype="<U12")
    elif kind == "semi_optimal":
        x_p, y_p = semi_optimal_attack(x_tr, y_tr, x_val, y_val, n, svm_params, rng, **opts)
        kinds = np.full(n, "semi_optimal", dtype="<U12")
    else:
        x_p, y_p, kinds = mixed_attack(x_tr, y_tr, x_val, y_val, n, svm_params, rng, **opts)
    dtype = _out_dtype(x_tr)
    x_all = np.concatenate([x_tr.astype(dtype), x_p.astype(dtype)])
    y_all = np.concatenate([y_tr, y_p]).astype(np.int64)
    is_poison = np.concatenate([np.zeros(len(x_tr), bool), np.ones(n, bool)])
    poison_kind = np.concatenate([np.full(len(x_tr), "clean", dtype="<U12"), kinds])
    return x_all, y_all, is_poison, poison_kind
