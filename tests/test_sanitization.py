"""The two rivals: kNN label sanitization (Paudice et al.) and loss-based filtering."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from poisondetect.__main__ import main
from poisondetect.detectors import registry
from poisondetect.detectors.sanitization import KNNLabelSanitization, LossFilter
from poisondetect.errors import PoisonDetectError


def two_clusters(n=200, d=8, n_flip=10, seed=0):
    """Two well-separated Gaussian clusters in [0, 1]^d (labels = cluster), and a copy of the
    labels where ``n_flip`` random points carry the other cluster's label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = np.clip(0.3 + 0.4 * y[:, None] + 0.04 * rng.standard_normal((n, d)), 0, 1)
    flipped = np.zeros(n, bool)
    flipped[rng.choice(n, n_flip, replace=False)] = True
    return x.astype(np.float32), y, np.where(flipped, 1 - y, y), flipped


def separable(n=200, n_flip=6, seed=0):
    """Points in [0, 1]^2 on either side of the line x0 = x1, at least 0.15 away from it (so the
    SVM's boundary is known up to the gap); the labels of ``n_flip`` points far from the line
    (distance > 0.3) are flipped: those, and only those, lie on the wrong side."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (6 * n, 2))
    gap = (x[:, 0] - x[:, 1]) / np.sqrt(2)
    x, gap = x[np.abs(gap) > 0.15][:n], gap[np.abs(gap) > 0.15][:n]
    y = (gap > 0).astype(int)
    far = np.flatnonzero(np.abs(gap) > 0.3)
    flipped = np.zeros(n, bool)
    flipped[rng.choice(far, n_flip, replace=False)] = True
    return x.astype(np.float32), np.where(flipped, 1 - y, y), flipped, gap


# ----------------------------------------------------------------------------- kNN sanitization


@pytest.mark.parametrize("reference", ["self", "fit"])
def test_knn_flags_the_flipped_labels_and_nothing_in_the_clean_set(reference):
    x, y, y_poisoned, flipped = two_clusters()
    det = KNNLabelSanitization(reference=reference).fit(x, y_poisoned)
    np.testing.assert_array_equal(det.predict(x, y_poisoned), flipped)
    s = det.score_samples(x, y_poisoned)
    assert s[flipped].min() > s[~flipped].max()  # the flipped points score highest
    clean = KNNLabelSanitization(reference=reference).fit(x, y)
    assert not clean.predict(x, y).any()
    # a new set scored against the fitted one (reference="fit") or against itself
    x2, y2, y2_poisoned, flipped2 = two_clusters(n=80, n_flip=4, seed=1)
    np.testing.assert_array_equal(det.predict(x2, y2_poisoned), flipped2)


def test_knn_score_is_the_share_of_disagreeing_neighbours():
    # 1-D points: 0.0 0.1 0.2 0.3 | 0.9 1.0, labels 0 0 1 0 | 1 1; k = 2
    x = np.array([[0.0], [0.1], [0.2], [0.3], [0.9], [1.0]], dtype=np.float32)
    y = np.array([0, 0, 1, 0, 1, 1])
    det = KNNLabelSanitization(k=2).fit(x, y)
    sub = det.sub_scores(x, y)
    # neighbours: 0.0 -> 0.1, 0.2 (0, 1); 0.1 -> 0.0, 0.2 (0, 1); 0.2 -> 0.1, 0.3 (0, 0);
    # 0.3 -> 0.2, 0.1 (1, 0); 0.9 -> 1.0, 0.3 (1, 0); 1.0 -> 0.9, 0.3 (1, 0)
    np.testing.assert_allclose(sub["neighbour_disagreement"], [0.5, 0.5, 1.0, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(
        sub["neighbour_distance"], [0.15, 0.1, 0.1, 0.15, 0.35, 0.4], atol=1e-6
    )
    np.testing.assert_array_equal(det.score_samples(x, y), sub["neighbour_disagreement"])
    # eta rule: only 0.2 has another label strictly more common than its own (2 of 2)
    np.testing.assert_array_equal(det.predict(x, y), [False, False, True, False, False, False])


def test_knn_eta_rule_ties_thresholds_and_several_classes():
    # the point at 0 and k = 4 neighbours at growing distances with chosen labels
    def flags(neighbour_labels, own, eta):
        x = np.arange(len(neighbour_labels) + 1, dtype=np.float32)[:, None] / 10
        y = np.array([own, *neighbour_labels])
        det = KNNLabelSanitization(k=len(neighbour_labels), eta=eta, reference="fit").fit(x, y)
        return bool(det.predict(x[:1], y[:1])[0])

    assert not flags([1, 1, 0, 0], own=0, eta=0.5)  # a tie keeps the given label
    assert flags([1, 1, 1, 0], own=0, eta=0.5)
    assert not flags([1, 1, 1, 0], own=0, eta=0.8)  # 3/4 < eta
    assert flags([1, 1, 1, 1], own=0, eta=1.0)
    # three classes: the most common label must beat the point's own and reach eta
    assert flags([2, 2, 1, 0], own=0, eta=0.5)
    assert not flags([2, 1, 1, 0], own=1, eta=0.25)  # its own label is the most common
    assert not flags([2, 1, 0, 0], own=0, eta=0.25)  # 2 and 1 (1 each) do not beat 0 (2)


def test_knn_point_is_never_its_own_neighbour():
    # pairs of close points with opposite labels: with k = 1 each point's neighbour is its partner
    x = np.array([[0.0, 0.0], [0.05, 0.0], [1.0, 1.0], [1.0, 0.95]], dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    for reference in ("self", "fit"):  # fit and score the same points (the filter command)
        det = KNNLabelSanitization(k=1, reference=reference).fit(x, y)
        np.testing.assert_array_equal(det.score_samples(x, y), np.ones(4))  # itself: 0
        assert (det.sub_scores(x, y)["neighbour_distance"] > 0).all()
    # scored against a set that contains it among others: its copy in the set is left out
    det = KNNLabelSanitization(k=1, reference="fit").fit(x, y)
    np.testing.assert_array_equal(det.score_samples(x[1:2], y[1:2]), [1.0])
    # a copy with the other label (a flipped duplicate) is another point: it stays a neighbour
    xd = np.concatenate([x, x[:1]])
    yd = np.r_[y, 1]
    det = KNNLabelSanitization(k=1).fit(xd, yd)
    sub = det.sub_scores(xd, yd)
    assert sub["neighbour_distance"][0] == 0 and sub["neighbour_disagreement"][0] == 1.0
    assert sub["neighbour_distance"][4] == 0 and sub["neighbour_disagreement"][4] == 1.0


def test_knn_any_label_values_and_the_gmm_decision():
    x, _, y_poisoned, flipped = two_clusters()
    names = np.array(["cat", "dog"])[y_poisoned]
    det = KNNLabelSanitization().fit(x, names)
    np.testing.assert_array_equal(det.predict(x, names), flipped)
    gmm = KNNLabelSanitization(decision="gmm").fit(x, y_poisoned)
    np.testing.assert_array_equal(gmm.predict(x, y_poisoned), flipped)


# ----------------------------------------------------------------------------- loss filtering


@pytest.mark.parametrize("reference", ["fit", "self"])
def test_loss_filter_flags_exactly_the_points_on_the_wrong_side(reference):
    x, y, flipped, gap = separable()
    det = LossFilter(decision="margin", C=10.0, reference=reference).fit(x, y)
    sub = det.sub_scores(x, y)
    # the fitted boundary is the known line up to the gap: the margin's sign is the side
    s = np.where(y == 1, 1.0, -1.0)
    np.testing.assert_array_equal(sub["margin"] < 0, s * gap < 0)
    np.testing.assert_array_equal(det.predict(x, y), flipped)
    np.testing.assert_allclose(sub["loss"], np.maximum(0, 1 - sub["margin"]))
    inside = (sub["loss"] > 0) & (sub["margin"] > 0)  # inside the margin, on the right side
    assert inside.sum() >= 5 and not det.predict(x, y)[inside].any()
    np.testing.assert_array_equal(det.score_samples(x, y), -sub["margin"])
    # the GMM decision finds them too, and so does a logistic model
    gmm = LossFilter(C=10.0, reference=reference, decision="gmm").fit(x, y)
    np.testing.assert_array_equal(gmm.predict(x, y), flipped)
    logistic = LossFilter(loss_model="logistic", C=100.0, decision="margin").fit(x, y)
    np.testing.assert_array_equal(logistic.predict(x, y), flipped)
    m = logistic.sub_scores(x, y)
    np.testing.assert_allclose(m["loss"], np.log1p(np.exp(-m["margin"])), rtol=1e-10)


def test_loss_filter_scores_new_points_with_the_fitted_model():
    x, y, flipped, gap = separable()
    det = LossFilter(C=10.0).fit(x, y)  # decision="margin" by default
    x2, y2, flipped2, _ = separable(n=60, n_flip=3, seed=1)
    np.testing.assert_array_equal(det.predict(x2, y2), flipped2)
    np.testing.assert_allclose(
        det.sub_scores(x2, y2)["margin"], (2 * y2 - 1) * det.model_.decision_function(x2)
    )


def test_loss_filter_maps_any_two_label_values():
    x, y, flipped, _ = separable()
    labels = np.array([3, 8])[y]
    det = LossFilter(decision="margin", C=10.0).fit(x, labels)
    assert det.classes_.tolist() == [3, 8]
    np.testing.assert_array_equal(det.predict(x, labels), flipped)
    with pytest.raises(PoisonDetectError, match="not the fit data's classes"):
        det.score_samples(x[:3], np.array([3, 8, 5]))
    with pytest.raises(PoisonDetectError, match="exactly two"):
        LossFilter().fit(x, np.zeros(len(x), int))


# ----------------------------------------------------------------------------- protocol


@pytest.mark.parametrize(
    ("name", "params"),
    [
        (
            "knn_sanitization",
            {"k": 3, "eta": 0.7, "reference": "fit", "decision": "gmm", "seed": 4},
        ),
        ("loss_filter", {"loss_model": "logistic", "C": 2.0, "decision": "gmm", "seed": 4}),
    ],
)
def test_registered_clone_and_get_params(name, params):
    det = registry.build("sample", name, params, seed=1, device="cpu", batch_size=8)
    assert type(det) is registry.get("sample", name)
    assert {k: det.get_params()[k] for k in params} == params  # the block wins over run settings
    x, y, y_poisoned, _ = two_clusters()
    det.fit(x, y_poisoned)
    copy = clone(det)
    assert copy.get_params() == det.get_params()
    assert not [k for k in vars(copy) if k.endswith("_")]
    np.testing.assert_array_equal(
        copy.fit(x, y_poisoned).score_samples(x, y_poisoned), det.score_samples(x, y_poisoned)
    )


@pytest.mark.parametrize(
    ("cls", "params", "match"),
    [
        (KNNLabelSanitization, {"k": 0}, "k must be"),
        (KNNLabelSanitization, {"k": 2.5}, "k must be"),
        (KNNLabelSanitization, {"eta": 0.0}, "eta must be"),
        (KNNLabelSanitization, {"eta": 1.5}, "eta must be"),
        (KNNLabelSanitization, {"reference": "pooled"}, "reference must be"),
        (KNNLabelSanitization, {"decision": "margin"}, "decision must be"),
        (KNNLabelSanitization, {"k": 400, "reference": "fit"}, "lower k"),
        (LossFilter, {"C": 0.0}, "C must be"),
        (LossFilter, {"loss_model": "tree"}, "loss_model must be"),
        (LossFilter, {"kernel": "poly"}, "kernel must be"),
        (LossFilter, {"gamma": -1.0}, "gamma must be"),
        (LossFilter, {"decision": "eta"}, "decision must be"),
        (LossFilter, {"reference": "both"}, "reference must be"),
    ],
)
def test_bad_parameters_are_refused_in_fit(cls, params, match):
    x, y, _, _ = two_clusters()
    det = cls(**params)  # stored as given
    assert {k: det.get_params()[k] for k in params} == params
    with pytest.raises(PoisonDetectError, match=match):
        det.fit(x, y)


def test_bad_data_is_refused():
    x, y, _, _ = two_clusters()
    for det in (KNNLabelSanitization(reference="fit"), LossFilter()):
        det.fit(x, y)
        with pytest.raises(PoisonDetectError, match="features"):
            det.score_samples(x[:, :3], y)
        with pytest.raises(PoisonDetectError, match="shape"):
            det.score_samples(x, y[:-1])
        with pytest.raises(PoisonDetectError, match=r"\[0, 1\]"):
            det.fit(x + 2, y)
    with pytest.raises(PoisonDetectError, match="not fitted"):
        LossFilter().score_samples(x, y)
    with pytest.raises(PoisonDetectError, match="lower k"):  # a scored set too small for k
        KNNLabelSanitization(k=10, reference="self").fit(x, y).score_samples(x[:10], y[:10])


# ----------------------------------------------------------------------------- the filter command


@pytest.mark.parametrize("detector", ["knn_sanitization", "loss_filter"])
def test_filter_command_runs_them(detector, tmp_path, capsys):
    x, _, y_poisoned, flipped = two_clusters()
    np.savez(tmp_path / "train.npz", x=x, y=y_poisoned, is_poison=flipped)
    out = tmp_path / "points.csv"
    argv = ["filter", "--data", str(tmp_path / "train.npz"), "--out", str(out)]
    assert main([*argv, "--detector", detector, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["f1"] == 1.0 and result["n_flagged"] == flipped.sum()
    points = pd.read_csv(out)
    knn = detector == "knn_sanitization"
    sub = ["neighbour_disagreement", "neighbour_distance"] if knn else ["margin", "loss"]
    assert list(points.columns) == ["index", "label", "score", *sub, "flagged"]
    np.testing.assert_array_equal(points["flagged"], flipped)


def test_loss_filter_takes_the_tasks_svm_unless_its_block_says_otherwise():
    from poisondetect.sample_level.filters import make_detector

    task_svm = {"kernel": "rbf", "C": 2.0, "gamma": 0.5}
    det = make_detector(
        "loss_filter", {}, {}, arch="dense", seed=0, device="cpu", svm=task_svm
    )._model()
    assert (det.kernel, det.C, det.gamma) == ("rbf", 2.0, 0.5)
    own = make_detector(
        "loss_filter", {"kernel": "linear"}, {}, arch="dense", seed=0, device="cpu", svm=task_svm
    )._model()
    assert (own.kernel, own.C) == ("linear", 2.0)
    plain = make_detector("loss_filter", {}, {}, arch="dense", seed=0, device="cpu")._model()
    assert (plain.kernel, plain.C, plain.gamma) == ("linear", 1.0, "scale")
