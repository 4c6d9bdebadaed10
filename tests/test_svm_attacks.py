"""Tests of the sample-level SVM poisoning attacks (poisondetect.attacks.svm)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from poisondetect.attacks.gradient import validation_hinge_gradient
from poisondetect.attacks.svm import (
    flip_attack,
    mixed_attack,
    mixed_split,
    optimal_attack,
    poison,
    semi_optimal_attack,
)
from poisondetect.errors import PoisonDetectError
from poisondetect.rounds import make_rounds

LINEAR = {"kernel": "linear", "C": 1.0}
RBF = {"kernel": "rbf", "gamma": 0.5, "C": 10.0}
TIGHT = 1e-12  # libsvm tolerance for the finite-difference reference


def blobs(n_per_class: int, d: int, rng: np.random.Generator, spread: float = 0.15):
    """Two Gaussian blobs around 0.35 and 0.65 (labels 0 and 1)."""
    x = np.vstack(
        [rng.normal(0.35, spread, (n_per_class, d)), rng.normal(0.65, spread, (n_per_class, d))]
    )
    y = np.repeat([0, 1], n_per_class)
    return x, y


def val_hinge(params: dict, x, y, x_val, y_val) -> float:
    svc = SVC(**params, tol=TIGHT).fit(x, y)
    y_pm = np.where(y_val == 1, 1.0, -1.0)
    return float(np.mean(np.maximum(0.0, 1.0 - y_pm * svc.decision_function(x_val))))


def sv_sets(params: dict, x, y) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(margin support vectors, bounded support vectors) of the SVM trained on (x, y)."""
    svc = SVC(**params, tol=TIGHT).fit(x, y)
    alpha = np.abs(svc.dual_coef_[0])
    margin = svc.support_[alpha < params["C"] * (1 - 1e-6)]
    bound = svc.support_[alpha >= params["C"] * (1 - 1e-6)]
    return tuple(sorted(margin)), tuple(sorted(bound))


@pytest.fixture(scope="module")
def small_task():
    rng = np.random.default_rng(0)
    x, y = blobs(15, 5, rng)
    x_val, y_val = blobs(40, 5, rng)
    return x, y, x_val, y_val


@pytest.mark.parametrize("params", [LINEAR, RBF], ids=["linear", "rbf"])
@pytest.mark.parametrize("which", ["margin", "bound"])
def test_gradient_matches_finite_differences(small_task, params, which):
    x, y, x_val, y_val = small_task
    margin, bound = sv_sets(params, x, y)
    candidates = margin if which == "margin" else bound
    assert candidates, f"test setting has no {which} support vector"
    c = candidates[0]
    svc = SVC(**params, tol=TIGHT).fit(x, y)
    objective, grad = validation_hinge_gradient(svc, x, y, c, x_val, y_val)
    assert objective == pytest.approx(val_hinge(params, x, y, x_val, y_val), abs=1e-9)

    eps = 1e-4
    fd = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        xp, xm = x.copy(), x.copy()
        xp[c, j] += eps
        xm[c, j] -= eps
        # the derivative exists only while the support sets stay the same
        assert sv_sets(params, xp, y) == (margin, bound)
        assert sv_sets(params, xm, y) == (margin, bound)
        fd[j] = (
            val_hinge(params, xp, y, x_val, y_val) - val_hinge(params, xm, y, x_val, y_val)
        ) / (2 * eps)
    assert np.linalg.norm(fd) > 1e-3
    rel = np.linalg.norm(grad - fd) / np.linalg.norm(fd)
    cos = grad @ fd / (np.linalg.norm(grad) * np.linalg.norm(fd))
    assert rel < 0.02, (rel, grad, fd)
    assert cos > 0.999

    # the parameter-dict path fits the same SVM itself and gives the same answer
    obj2, grad2 = validation_hinge_gradient({**params, "tol": TIGHT}, x, y, c, x_val, y_val)
    assert obj2 == pytest.approx(objective, abs=1e-8)
    np.testing.assert_allclose(grad2, grad, atol=1e-6 * np.abs(grad).max())


def test_non_support_vector_has_zero_gradient(small_task):
    x, y, x_val, y_val = small_task
    svc = SVC(**LINEAR, tol=TIGHT).fit(x, y)
    c = int(np.setdiff1d(np.arange(len(x)), svc.support_)[0])
    _, grad = validation_hinge_gradient(svc, x, y, c, x_val, y_val)
    assert not grad.any()


@pytest.fixture(scope="module")
def digits_rounds():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:1200], perm[1200:]
    return make_rounds(
        x[tr], y[tr], x[te], y[te], (9, 8), n_rounds=3, n_train=60, n_val=60, n_test=100, seed=1
    )


def test_optimal_hurts_more_than_flipping(digits_rounds):
    rounds = digits_rounds
    acc = {"clean": [], "flip": [], "optimal": []}
    for r in range(rounds.n_rounds):
        args = (rounds.x_train[r], rounds.y_train[r], rounds.x_val[r], rounds.y_val[r])
        for kind in acc:
            if kind == "clean":
                x, y = args[0], args[1]
            else:
                x, y = poison(kind, *args, n_poison=6, svm_params=LINEAR, seed=r)[:2]
            svc = SVC(**LINEAR).fit(x, y)
            acc[kind].append(svc.score(rounds.x_test[r], rounds.y_test[r]))
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    assert mean["optimal"] < mean["flip"] - 0.03, mean
    assert mean["optimal"] < mean["clean"] - 0.03, mean


@pytest.fixture(scope="module")
def blob_round():
    rng = np.random.default_rng(3)
    x, y = blobs(20, 8, rng, spread=0.2)
    x_val, y_val = blobs(30, 8, rng, spread=0.2)
    return np.clip(x, 0, 1).astype(np.float32), y, np.clip(x_val, 0, 1).astype(np.float32), y_val


def test_flip_copies_training_points_with_flipped_labels(blob_round):
    x, y, _, _ = blob_round
    x_p, y_p = flip_attack(x, y, 7, np.random.default_rng(0))
    assert x_p.shape == (7, x.shape[1]) and y_p.shape == (7,)
    for xi, yi in zip(x_p, y_p, strict=True):
        rows = np.flatnonzero((x == xi).all(axis=1))
        assert rows.size == 1  # an exact copy of one training point
        assert yi == 1 - y[rows[0]]


@pytest.mark.parametrize("params", [LINEAR, RBF], ids=["linear", "rbf"])
def test_optimal_poisons_flip_labels_and_move(blob_round, params):
    x, y, x_val, y_val = blob_round
    src = np.array([0, 5, 25, 33])
    x_p, y_p = optimal_attack(x, y, x_val, y_val, 4, params, np.random.default_rng(0), sources=src)
    np.testing.assert_array_equal(y_p, 1 - y[src])
    moved = np.abs(x_p - x[src]).max(axis=1)
    assert (moved > 0).all()
    assert moved.max() > 0.05  # beyond the start noise of 1e-3
    assert x_p.min() >= 0.0 and x_p.max() <= 1.0


def test_semi_optimal_keeps_true_labels(blob_round):
    x, y, x_val, y_val = blob_round
    src = np.arange(0, 60, 6)
    x_p, y_p = semi_optimal_attack(
        x, y, x_val, y_val, len(src), LINEAR, np.random.default_rng(0), sources=src
    )
    np.testing.assert_array_equal(y_p, y_val[src])
    moved = np.abs(x_p - x_val[src]).max(axis=1)
    assert (moved > 0).all()  # at least the start noise
    assert moved.max() > 0.05  # and some poison was really optimised
    assert x_p.min() >= 0.0 and x_p.max() <= 1.0


def test_box_is_respected(blob_round):
    x, y, x_val, y_val = blob_round
    x_p, _ = optimal_attack(x, y, x_val, y_val, 3, LINEAR, np.random.default_rng(1), box=(0.2, 0.7))
    assert x_p.min() >= 0.2 and x_p.max() <= 0.7


@pytest.mark.parametrize("n", [10, 5, 1])
def test_mixed_has_a_third_of_each(blob_round, n):
    x, y, x_val, y_val = blob_round
    expected = {10: (4, 3, 3), 5: (2, 2, 1), 1: (1, 0, 0)}[n]
    assert tuple(mixed_split(n).values()) == expected
    x_p, y_p, kinds = mixed_attack(x, y, x_val, y_val, n, LINEAR, np.random.default_rng(0))
    counts = tuple(int((kinds == k).sum()) for k in ("flip", "optimal", "semi_optimal"))
    assert counts == expected
    assert len(x_p) == len(y_p) == n
    for xi in x_p[kinds == "flip"]:
        assert (x == xi).all(axis=1).any()
    assert x_p.min() >= 0.0 and x_p.max() <= 1.0


@pytest.mark.parametrize("kind", ["flip", "optimal", "semi_optimal", "mixed"])
def test_poison_dispatcher(blob_round, kind):
    x, y, x_val, y_val = blob_round
    out = poison(kind, x, y, x_val, y_val, 6, RBF, seed=4, max_iter=20)
    x_all, y_all, is_poison, poison_kind = out
    assert x_all.shape == (len(x) + 6, x.shape[1]) and x_all.dtype == np.float32
    np.testing.assert_array_equal(x_all[: len(x)], x)
    np.testing.assert_array_equal(y_all[: len(x)], y)
    assert is_poison.sum() == 6 and is_poison[len(x) :].all()
    assert set(poison_kind[~is_poison]) == {"clean"}
    if kind == "mixed":
        assert (
            sorted(poison_kind[is_poison]) == ["flip"] * 2 + ["optimal"] * 2 + ["semi_optimal"] * 2
        )
    else:
        assert set(poison_kind[is_poison]) == {kind}
    assert x_all.min() >= 0.0 and x_all.max() <= 1.0
    again = poison(kind, x, y, x_val, y_val, 6, RBF, seed=4, max_iter=20)
    for a, b in zip(out, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = poison(kind, x, y, x_val, y_val, 6, RBF, seed=5, max_iter=20)
    assert not np.array_equal(other[0], x_all)


def test_poison_zero_and_errors(blob_round):
    x, y, x_val, y_val = blob_round
    x_all, y_all, is_poison, kinds = poison("optimal", x, y, x_val, y_val, 0, LINEAR, seed=0)
    np.testing.assert_array_equal(x_all, x)
    np.testing.assert_array_equal(y_all, y)
    assert not is_poison.any() and set(kinds) == {"clean"}
    with pytest.raises(PoisonDetectError, match="semi_optimal"):
        poison("backdoor", x, y, x_val, y_val, 3, LINEAR, seed=0)
    with pytest.raises(PoisonDetectError, match="labels must be 0/1"):
        poison("flip", x, y + 3, x_val, y_val, 3, LINEAR, seed=0)
    with pytest.raises(PoisonDetectError, match="unknown attack option"):
        poison("optimal", x, y, x_val, y_val, 3, LINEAR, seed=0, steps=0.1)
    with pytest.raises(PoisonDetectError, match="kernel"):
        poison("optimal", x, y, x_val, y_val, 3, {"kernel": "poly"}, seed=0)
    with pytest.raises(PoisonDetectError, match="n_poison"):
        poison("flip", x, y, x_val, y_val, -1, LINEAR, seed=0)
