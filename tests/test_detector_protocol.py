"""The one detector protocol: every registered sample-level detector is a scikit-learn style
estimator, and a detector registered in a test runs through the sample-level stage untouched."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits

from poisondetect.detectors import registry
from poisondetect.detectors.base import SampleDetector
from poisondetect.detectors.spectral import ActivationClustering, SpectralSignatures
from poisondetect.metrics import filter_metrics
from poisondetect.sample_level.collection import collect
from poisondetect.sample_level.filters import fit_filter

FAST = {"epochs": 1, "rae_epochs": 1, "cae_epochs": 1, "batch_size": 32, "lr": 1e-2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits01():
    d = load_digits()
    keep = (d.target == 0) | (d.target == 1)
    return (d.data[keep][:120] / 16.0).astype(np.float32), (d.target[keep][:120] == 1).astype(int)


def _fitted_attrs(det) -> list[str]:
    return [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]


@pytest.mark.parametrize("name", registry.names("sample"))
def test_clone_gives_an_unfitted_copy_with_the_same_parameters(name, digits01):
    x, y = digits01
    det = registry.build("sample", name, {}, **FAST, seed=3, device="cpu")
    params = det.get_params()
    assert params.get("seed") == 3  # run settings reach the detectors that take them
    assert det.fit(x, y) is det
    assert _fitted_attrs(det), "fit stores what it learns in attributes ending in _"
    copy = clone(det)
    assert type(copy) is type(det) and copy is not det
    assert copy.get_params() == params
    assert _fitted_attrs(copy) == []
    # the copy refits to the same scores (same parameters, same seed); higher = more suspicious
    s = det.score_samples(x, y)
    np.testing.assert_allclose(copy.fit(x, y).score_samples(x, y), s)
    assert s.shape == (len(x),) and np.isfinite(s).all()
    flags = det.predict(x, y)
    assert flags.dtype == bool and flags.shape == (len(x),)
    subs = det.sub_scores(x, y)
    for sub in subs.values():
        assert np.shape(sub) == (len(x),)
    # what it emits is what the registry declares (the config's names are checked against that)
    assert ("score", *subs) == registry.emits("sample", name)


def test_parameters_are_validated_in_fit_not_in_init(digits01):
    x, y = digits01
    det = registry.build("sample", "cae_plus", {"alpha": 1.5})  # stored as given
    assert det.get_params()["alpha"] == 1.5
    with pytest.raises(ValueError, match="alpha"):
        det.fit(x, y)
    with pytest.raises(ValueError, match="unknown sample-level detector"):
        registry.get("sample", "no_such_detector")


# ----------------------------------------------------------------------------- a toy detector


class FlippedLabel(SampleDetector):
    """Toy: nearest-centroid disagreement with the given label; a sub-score and a repair."""

    def __init__(self, *, margin: float = 0.0, seed: int = 0) -> None:
        self.margin = margin
        self.seed = seed

    def fit(self, X, y):
        self.centroids_ = np.stack([X[y == c].mean(0) for c in (0, 1)])
        return self

    def sub_scores(self, X, y):
        d = np.linalg.norm(X[:, None, :] - self.centroids_[None], axis=2)
        return {"own": d[np.arange(len(X)), y], "other": d[np.arange(len(X)), 1 - y]}

    def score_samples(self, X, y):
        s = self.sub_scores(X, y)
        return s["own"] - s["other"] + self.margin

    def repair(self, X):
        self.repaired_ = len(X)
        return X


def _poisoned_file(path, n_rounds=4, n=40, n_poison=4, seed=0):
    """Rounds of two separated classes; the last n_poison points of each round have flipped labels."""
    rng = np.random.default_rng(seed)

    def batch(m):
        y = np.arange(m) % 2
        x = np.clip(0.3 + 0.4 * y[:, None] + 0.05 * rng.standard_normal((m, 6)), 0, 1)
        return x.astype(np.float32), y

    xs, ys, masks, xc, yc, xt, yt = [], [], [], [], [], [], []
    for _ in range(n_rounds):
        x, y = batch(n)
        xp, yp = batch(n_poison)
        xs.append(np.concatenate([x, xp])), ys.append(np.concatenate([y, 1 - yp]))
        masks.append(np.r_[np.zeros(n, bool), np.ones(n_poison, bool)])
        xc.append(x), yc.append(y)
        a, b = batch(20)
        xt.append(a), yt.append(b)
    np.savez(
        path,
        x=np.stack(xs),
        y=np.stack(ys),
        is_poison=np.stack(masks),
        poison_kind=np.where(np.stack(masks), "flip", "clean"),
        acc_undefended=np.full(n_rounds, 0.9),
        acc_clean=np.ones(n_rounds),
        x_test=np.stack(xt),
        y_test=np.stack(yt),
        x_clean=np.stack(xc),
        y_clean=np.stack(yc),
    )
    return path


def test_a_detector_registered_here_runs_through_the_stage(tmp_path):
    registry.register("sample", "flipped_label", FlippedLabel)
    try:
        poisoned = _poisoned_file(tmp_path / "poisoned.npz")
        cell = {"task": "toy", "attack": "flip", "n_poison": 4, "poison_rate": 0.1, "seed": 0}
        fit_filter(
            str(poisoned),
            str(tmp_path / "scores.parquet"),
            str(tmp_path / "summary.json"),
            detector="flipped_label",
            params={"margin": 0.0},
            shared={"batch_size": 32, "lr": 0.01},  # not taken by the toy: not passed
            train_on="contaminated",
            n_detector_rounds=2,
            arch="dense",
            svm={"kernel": "linear", "C": 1.0},
            seed=0,
            device="cpu",
            cell=cell,
        )
    finally:
        registry.unregister("sample", "flipped_label")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {(r["detector"], r["decision"]) for r in summary} == {
        ("flipped_label", "own"),
        ("flipped_label", "topk"),
    }
    topk = next(r for r in summary if r["decision"] == "topk")
    assert topk["f1"] == 1.0  # the flipped points score highest
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert {"own", "other", "score", "flagged"} <= set(scores.columns)  # its sub-scores are kept
    assert sorted(scores["round"].unique()) == [2, 3]
    table = collect([str(tmp_path / "summary.json")], str(tmp_path / "filtering.csv"))
    assert set(table["detector"]) == {"flipped_label", "none"}


# ----------------------------------------------------------------------------- the new baselines


@pytest.fixture(scope="module")
def planted():
    """Two classes of 200 points in [0, 1]^20; 12 points of class 0 shifted along one direction."""
    rng = np.random.default_rng(0)
    n, d = 200, 20
    y = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    x = 0.5 + 0.08 * rng.standard_normal((n, d)) + 0.1 * (y[:, None] - 0.5)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    xp = 0.5 + 0.08 * rng.standard_normal((12, d)) - 0.05 + 0.6 * direction
    x = np.clip(np.concatenate([x, xp]), 0, 1).astype(np.float32)
    y = np.r_[y, np.zeros(12, int)]
    return x, y, np.r_[np.zeros(n, bool), np.ones(12, bool)]


def test_spectral_signatures_pick_out_a_planted_cluster(planted):
    x, y, is_poison = planted
    det = SpectralSignatures().fit(x, y)
    s = det.score_samples(x, y)
    top = np.argsort(-s)[: is_poison.sum()]
    assert is_poison[top].mean() >= 0.9  # the 12 highest scores are (almost) the planted points
    assert filter_metrics(is_poison, det.predict(x, y), s)["auroc"] > 0.98
    # by hand: squared projection on the top singular vector of the centred class-0 data
    g = x[y == 0].astype(np.float64)
    v = np.linalg.svd(g - g.mean(0), full_matrices=False)[2][0]
    np.testing.assert_allclose(s[y == 0], ((g - g.mean(0)) @ v) ** 2, rtol=1e-9)


def test_activation_clustering_flags_the_small_cluster(planted):
    x, y, is_poison = planted
    det = ActivationClustering().fit(x, y)
    m = filter_metrics(is_poison, det.predict(x, y), det.score_samples(x, y))
    assert m["recall"] == 1.0 and m["precision"] > 0.9, m
    # a class whose clusters are of similar size flags nothing
    assert det.sizes_[1, 0] > det.max_size and not det.predict(x, y)[y == 1].any()
