"""Seeds and seeded subsets: the one seed-derivation helper and the one stratified-subset helper.

Every stage derives the seeds of its random choices from the run's seed with ``derive_seed`` (one
independent stream per key tuple), and every stratified draw goes through ``stratified_subset``.
"""

from __future__ import annotations

import numbers

import numpy as np

from poisondetect.errors import PoisonDetectError


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for the stream named by ``keys`` under ``seed`` (numpy ``SeedSequence``):
    the same arguments give the same seed, different keys give independent streams."""
    parts = [int(seed), *(int(k) for k in keys)]
    if any(p < 0 for p in parts):
        raise PoisonDetectError(f"seed and keys must be non-negative integers, got {parts}")
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


def stratified_subset(
    y: np.ndarray, fraction_or_n: float | int, seed: int | np.random.Generator
) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``y`` that keeps every class.

    - ``fraction_or_n`` a float in ``(0, 1]``: that fraction of each class (at least one point of
      each), drawn class by class with ``rng.choice``.
    - an integer ``n``: ``n`` points in all (every index when ``n >= len(y)``), each class its
      proportional share, the leftover slots to the largest remainders.

    ``seed`` is an integer or a ``numpy.random.Generator`` (then its stream is consumed).
    """
    y = np.asarray(y)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if isinstance(fraction_or_n, bool) or not isinstance(fraction_or_n, numbers.Real):
        raise PoisonDetectError(f"fraction_or_n must be a number, got {fraction_or_n!r}")
    if isinstance(fraction_or_n, numbers.Integral):
        n = int(fraction_or_n)
        if n < 0:
            raise PoisonDetectError(f"the subset size must be >= 0, got {n}")
        if n >= len(y):
            return np.arange(len(y))
        classes, counts = np.unique(y, return_counts=True)
        quota = counts * n / len(y)
        take = np.floor(quota).astype(np.int64)
        leftover = n - int(take.sum())
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:leftover]] += 1
        picked = [
            rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)
        ]
        return np.sort(np.concatenate(picked)) if picked else np.arange(0)
    fraction = float(fraction_or_n)
    if not 0.0 < fraction <= 1.0:
        raise PoisonDetectError(f"the subset fraction must be in (0, 1], got {fraction}")
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(rng.choice(idx, size=max(1, int(round(fraction * len(idx)))), replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)
