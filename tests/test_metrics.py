"""Filter metrics (precision / recall / F1 / AUROC of the poisoned class) and accuracies."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from poisondetect.errors import PoisonDetectError
from poisondetect.metrics import accuracy, attack_success, filter_metrics


def test_hand_computed_case():
    is_poison = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    flagged = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)  # tp 3, fp 2, fn 0, tn 3
    m = filter_metrics(is_poison, flagged)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 0, 3)
    assert m["precision"] == pytest.approx(0.6)
    assert m["recall"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(0.75)
    assert (m["n_poison"], m["n_flagged"]) == (3, 5)
    assert math.isnan(m["auroc"])  # no scores given

    flagged = np.array([1, 0, 0, 1, 1, 0, 0, 0], bool)  # tp 1, fp 2, fn 2, tn 3
    m = filter_metrics(is_poison, flagged)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 2, 2, 3)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)


def test_matches_sklearn_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        t, f = rng.random(50) < 0.2, rng.random(50) < 0.3
        assert filter_metrics(t, f)["f1"] == pytest.approx(f1_score(t, f, zero_division=0))


def test_auroc():
    is_poison = np.array([0, 0, 0, 1, 1])
    m = filter_metrics(is_poison, is_poison, scores=np.array([0.1, 0.2, 0.3, 0.8, 0.9]))
    assert m["auroc"] == pytest.approx(1.0) and m["f1"] == 1.0
    m = filter_metrics(is_poison, is_poison, scores=np.array([0.9, 0.2, 0.3, 0.8, 0.1]))
    assert m["auroc"] == pytest.approx(2 / 6)
    m = filter_metrics(np.zeros(4, bool), np.zeros(4, bool), scores=np.arange(4.0))
    assert math.isnan(m["auroc"])


def test_undefined_cases_give_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none_flagged = filter_metrics(
            np.array([1, 0, 0], bool), np.zeros(3, bool), np.array([0.0, 1.0, 2.0])
        )
        no_poison = filter_metrics(
            np.zeros(3, bool), np.array([1, 0, 0], bool), np.array([0.0, 1.0, 2.0])
        )
        empty = filter_metrics(np.zeros(0, bool), np.zeros(0, bool))
    assert (none_flagged["precision"], none_flagged["recall"], none_flagged["f1"]) == (
        0.0,
        0.0,
        0.0,
    )
    assert (no_poison["precision"], no_poison["recall"], no_poison["f1"]) == (0.0, 0.0, 0.0)
    assert math.isnan(no_poison["auroc"]) and empty["tp"] == 0


def test_bad_input():
    with pytest.raises(PoisonDetectError):
        filter_metrics(np.zeros(3, bool), np.zeros(4, bool))
    with pytest.raises(PoisonDetectError):
        filter_metrics(np.array([0, 2, 1]), np.zeros(3, bool))
    with pytest.raises(PoisonDetectError):
        filter_metrics(np.zeros(3, bool), np.zeros(3, bool), scores=np.array([0.0, np.nan, 1.0]))
    with pytest.raises(PoisonDetectError):
        accuracy(np.zeros(3), np.zeros(2))


def test_accuracy_and_attack_success():
    assert accuracy(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == pytest.approx(0.75)
    assert math.isnan(accuracy(np.array([]), np.array([])))
    assert attack_success(np.array([3, 3, 1, 3]), 3) == pytest.approx(0.75)
    assert attack_success(np.array([3, 2]), np.array([3, 1])) == pytest.approx(0.5)
