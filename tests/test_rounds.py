"""Tests of the periodic-update rounds (poisondetect.rounds)."""

from __future__ import annotations

import numpy as np
import pytest

from poisondetect.errors import PoisonDetectError
from poisondetect.rounds import Rounds, make_rounds


@pytest.fixture(scope="module")
def pools():
    """Pools with four classes (0..3), 40 training and 30 test points each, 6 features."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 40)
    y_test = np.repeat(np.arange(4), 30)
    x = rng.random((len(y), 6)).astype(np.float32)
    x_test = rng.random((len(y_test), 6)).astype(np.float32)
    return x, rng.permutation(y), x_test, rng.permutation(y_test)


def rounds_of(pools, **kwargs) -> Rounds:
    args = dict(classes=(3, 1), n_rounds=5, n_train=10, n_val=20, n_test=16, seed=7)
    args.update(kwargs)
    return make_rounds(*pools, **args)


def test_shapes_balance_mapping_and_disjointness(pools):
    x, y, x_test, y_test = pools
    r = rounds_of(pools)
    assert r.n_rounds == 5 and r.classes == (3, 1)
    assert r.x_train.shape == (5, 10, 6) and r.x_train.dtype == np.float32
    assert r.x_val.shape == (5, 20, 6) and r.x_test.shape == (5, 16, 6)
    assert r.y_train.shape == (5, 10) and r.y_train.dtype == np.int64
    for ys, n in ((r.y_train, 10), (r.y_val, 20), (r.y_test, 16)):
        assert set(np.unique(ys)) == {0, 1}
        np.testing.assert_array_equal(ys.sum(axis=1), n // 2)  # class balance in every round
    # label mapping: class a -> 0, class b -> 1; features are the pool rows
    for idx, xs, ys, xp, yp in (
        (r.idx_train, r.x_train, r.y_train, x, y),
        (r.idx_val, r.x_val, r.y_val, x, y),
        (r.idx_test, r.x_test, r.y_test, x_test, y_test),
    ):
        assert np.isin(yp[idx], (3, 1)).all()
        np.testing.assert_array_equal(ys, (yp[idx] == 1).astype(np.int64))
        np.testing.assert_array_equal(xs, xp[idx])
    for k in range(r.n_rounds):
        assert len(set(r.idx_train[k])) == 10 and len(set(r.idx_val[k])) == 20
        assert not set(r.idx_train[k]) & set(r.idx_val[k])
        # classes are interleaved, not sorted
        assert not (np.diff(r.y_train[k]) >= 0).all()


def test_seeded_and_rounds_independent_of_count(pools):
    a, b = rounds_of(pools), rounds_of(pools)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "idx_train"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = rounds_of(pools, seed=8)
    assert not np.array_equal(a.idx_train, c.idx_train)
    longer = rounds_of(pools, n_rounds=7)
    np.testing.assert_array_equal(longer.idx_train[:5], a.idx_train)
    assert not np.array_equal(a.idx_train[0], a.idx_train[1])


def test_points_may_recur_across_rounds(pools):
    # 40 points of each class, 30 per class per round: rounds must share points
    r = rounds_of(pools, n_train=20, n_val=40, n_rounds=3)
    used = [set(r.idx_train[k]) | set(r.idx_val[k]) for k in range(3)]
    assert used[0] & used[1] and used[1] & used[2]


def test_odd_sizes_give_the_extra_point_to_class_b(pools):
    r = rounds_of(pools, n_train=11, n_val=5, n_test=3)
    np.testing.assert_array_equal(r.y_train.sum(axis=1), 6)
    np.testing.assert_array_equal(r.y_val.sum(axis=1), 3)
    np.testing.assert_array_equal(r.y_test.sum(axis=1), 2)


def test_save_load_round_trip(pools, tmp_path):
    r = rounds_of(pools)
    path = tmp_path / "sub" / "rounds.npz"
    r.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["rounds.npz"]  # no temporary left behind
    back = Rounds.load(path)
    assert back.classes == r.classes and back.seed == r.seed
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "idx_test"):
        np.testing.assert_array_equal(getattr(back, name), getattr(r, name))
        assert getattr(back, name).dtype == getattr(r, name).dtype


def test_load_errors(tmp_path):
    bad = tmp_path / "rounds.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(PoisonDetectError, match="delete it and rerun"):
        Rounds.load(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, x_train=np.zeros((1, 2, 3)))
    with pytest.raises(PoisonDetectError, match="delete it and rerun"):
        Rounds.load(partial)
    with pytest.raises(PoisonDetectError, match="not found"):
        Rounds.load(tmp_path / "missing.npz")


def test_too_few_points_names_class_and_counts(pools):
    with pytest.raises(PoisonDetectError, match=r"class 3: a round needs 50 .* has 40"):
        rounds_of(pools, n_train=40, n_val=60)
    with pytest.raises(PoisonDetectError, match=r"class 3: a round needs 35 test points .* has 30"):
        rounds_of(pools, n_test=70)
    with pytest.raises(PoisonDetectError, match="two different labels"):
        rounds_of(pools, classes=(1, 1))
    x, y, x_test, y_test = pools
    with pytest.raises(PoisonDetectError, match="flatten"):
        make_rounds(x.reshape(-1, 2, 3), y, x_test, y_test, (3, 1))
