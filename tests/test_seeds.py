"""The one seed derivation and the one stratified subset."""

from __future__ import annotations

import numpy as np
import pytest

from poisondetect.errors import PoisonDetectError
from poisondetect.seeds import derive_seed, stratified_subset


def test_derive_seed_is_stable_and_separates_streams():
    assert derive_seed(0, 3) == derive_seed(0, 3)
    assert len({derive_seed(0, k) for k in range(100)}) == 100
    assert derive_seed(0, 1) != derive_seed(1, 0)
    # the sample level's round seeds since the first release (poisoned rounds stay cached)
    assert derive_seed(0, 0) == int(np.random.SeedSequence([0, 0]).generate_state(1)[0])
    assert 0 <= derive_seed(7, 1, 2) < 2**32
    with pytest.raises(PoisonDetectError):
        derive_seed(-1)


def test_stratified_subset_by_fraction_keeps_every_class():
    y = np.r_[np.zeros(90, int), np.ones(9, int), np.full(1, 2)]
    idx = stratified_subset(y, 0.5, seed=0)
    assert list(idx) == sorted(idx) and len(set(idx)) == len(idx)
    assert np.bincount(y[idx]).tolist() == [45, 4, 1]  # round(0.5 * n), at least one per class
    np.testing.assert_array_equal(idx, stratified_subset(y, 0.5, seed=0))
    assert not np.array_equal(idx, stratified_subset(y, 0.5, seed=1))


def test_stratified_subset_by_count_is_proportional():
    y = np.r_[np.zeros(60, int), np.ones(30, int), np.full(10, 2)]
    idx = stratified_subset(y, 10, seed=np.random.default_rng(0))
    assert np.bincount(y[idx]).tolist() == [6, 3, 1]
    assert len(stratified_subset(y, 7, seed=0)) == 7  # leftovers to the largest remainders
    np.testing.assert_array_equal(stratified_subset(y, 500, seed=0), np.arange(100))
    for bad in (-1, 0.0, 1.5, "half"):
        with pytest.raises(PoisonDetectError):
            stratified_subset(y, bad, seed=0)
