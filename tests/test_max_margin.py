"""MM-BD's maximum margin (detectors.max_margin) on linear networks built by hand, whose largest
margins are known in closed form: the search reaches them, a class given an outsized margin is
flagged against honest replicates, and a large margin every honest model shares is not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.base import clone

from poisondetect.detectors import registry
from poisondetect.detectors.base import fitted_state, restore_fitted
from poisondetect.detectors.max_margin import MaxMargin, max_margins
from poisondetect.detectors.model_level import ModelRecord
from poisondetect.errors import PoisonDetectError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 4, 4)
K = 4  # classes
FAST = {"steps": 150, "restarts": 2, "seed": 0, "device": "cpu"}


def _linear(weight: np.ndarray, bias: np.ndarray):
    import torch
    from torch import nn

    net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(SHAPE)), K))
    with torch.no_grad():
        net[1].weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        net[1].bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return net.eval()


def _exact(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A linear model's largest margin per class over [0, 1]^d, as a linear programme: maximise
    t subject to t <= (w_k - w_j) x + b_k - b_j for every other class j, 0 <= x <= 1."""
    from scipy.optimize import linprog

    d = weight.shape[1]
    out = []
    for k in range(K):
        others = [j for j in range(K) if j != k]
        a_ub = np.hstack([-(weight[k] - weight[others]), np.ones((len(others), 1))])
        b_ub = bias[k] - bias[others]
        res = linprog(np.r_[np.zeros(d), -1.0], A_ub=a_ub, b_ub=b_ub,
                      bounds=[(0, 1)] * d + [(None, None)])  # fmt: skip
        assert res.status == 0
        out.append(-res.fun)
    return np.array(out)


def _base(rng) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(0, 1, (K, int(np.prod(SHAPE)))), rng.normal(0, 0.1, K)


def _record(name: str, weight, bias) -> ModelRecord:
    labels = np.arange(8) % K
    images = np.random.default_rng(1).random((8, *SHAPE)).astype(np.float32)
    return ModelRecord(name, labels, labels, network=_linear(weight, bias), images=images)


@pytest.fixture(scope="module")
def population():
    """M, eight honest fine-tunes (small changes of every weight) and a backdoored one whose
    class 2 gained a strong pixel (what a trigger on that pixel teaches)."""
    rng = np.random.default_rng(0)
    w0, b0 = _base(rng)
    w0[1, :] += 0.8  # class 1: a large margin M already has, and every fine-tune keeps
    honest = []
    for i in range(8):
        honest.append(
            _record(f"honest_{i}", w0 + rng.normal(0, 0.05, w0.shape), b0 + rng.normal(0, 0.02, K))
        )
    wb = w0 + rng.normal(0, 0.05, w0.shape)
    wb[2, 5] += 6.0
    return {
        "genuine": _record("genuine", w0, b0),
        "honest": honest,
        "backdoored": _record("backdoored", wb, b0),
    }


def test_the_search_reaches_the_largest_margin_of_a_linear_model():
    rng = np.random.default_rng(3)
    w, b = _base(rng)
    found = max_margins(_linear(w, b), SHAPE, steps=300, lr=0.1, restarts=2, seed=0, device="cpu")
    exact = _exact(w, b)
    assert found.shape == (K,)
    assert np.all(found <= exact + 1e-4)  # never above what any input in [0, 1] reaches
    np.testing.assert_allclose(found, exact, rtol=0.05)


def test_a_class_given_an_outsized_margin_is_flagged_and_a_shared_one_is_not(population):
    det = MaxMargin(**FAST).fit(population["genuine"], population["honest"])
    honest = det.statistics(population["honest"])  # each against the other seven
    bad = det.statistics([population["backdoored"]])
    assert bad["honest_z"][0] > 3 * max(honest["honest_z"].max(), 1.0)
    # class 1's margin is large in every model: ``score`` (against the model's own classes)
    # sees it in every honest model, as large as the backdoor's; ``honest_z`` (against the
    # same class in the others) does not
    margins = det.margins(population["honest"][0])
    assert np.argmax(margins) == 1 and honest["score"].min() > 0.2
    assert honest["honest_z"].max() < 3


def test_a_fitting_replicate_is_scored_against_the_others(population):
    honest = population["honest"]
    det = MaxMargin(**FAST).fit(population["genuine"], honest)
    inside = det.statistics([honest[0]])["honest_z"][0]
    outside = MaxMargin(**FAST).fit(population["genuine"], honest[1:])
    np.testing.assert_allclose(outside.statistics([honest[0]])["honest_z"][0], inside)


def test_same_seed_same_margins_and_the_network_is_not_modified(population):
    rec = population["backdoored"]
    before = {k: v.clone() for k, v in rec.network.state_dict().items()}
    flags = [p.requires_grad for p in rec.network.parameters()]
    det = MaxMargin(**FAST).fit(population["genuine"])
    a = det.margins(rec)
    np.testing.assert_array_equal(MaxMargin(**FAST).fit(population["genuine"]).margins(rec), a)
    other = MaxMargin(**{**FAST, "seed": 1, "steps": 5}).fit(population["genuine"]).margins(rec)
    assert not np.array_equal(other, a)
    after = rec.network.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert [p.requires_grad for p in rec.network.parameters()] == flags


def test_restored_detector_gives_the_same_statistics(population):
    det = MaxMargin(**FAST).fit(population["genuine"], population["honest"])
    arrays, plain = fitted_state(det)  # the honest profiles travel as arrays: no pickle
    assert arrays["honest_profiles_"].shape == (8, K)
    restored = restore_fitted(MaxMargin(**FAST), arrays, plain)
    recs = [population["backdoored"], population["honest"][3]]
    for key, value in det.statistics(recs).items():
        np.testing.assert_array_equal(restored.statistics(recs)[key], value)


def test_clone_get_params_and_the_registry():
    det = registry.build("model", "max_margin", {"steps": 7}, seed=3, device="cpu", unrelated=1)
    assert type(det) is MaxMargin and MaxMargin.needs == ("network", "images")
    params = det.get_params()
    assert params["steps"] == 7 and params["seed"] == 3 and params["device"] == "cpu"
    copy_ = clone(det)
    assert copy_ is not det and copy_.get_params() == params
    assert registry.emits("model", "max_margin") == ("score", "honest_z")


@pytest.mark.parametrize(
    ("param", "value", "match"),
    [
        ("steps", 0, "steps must be an integer >= 1"),
        ("restarts", 1.5, "restarts must be an integer"),
        ("seed", -1, "seed"),
        ("lr", 0, "lr must be a number > 0"),
        ("device", "tpu", "device 'tpu' is not one of"),
    ],
)
def test_parameters_are_validated_in_fit(population, param, value, match):
    det = MaxMargin(**{param: value})  # stored as given
    assert det.get_params()[param] == value
    with pytest.raises(PoisonDetectError, match=match):
        det.fit(population["genuine"])


def test_bad_records_are_refused(population):
    genuine = population["genuine"]
    with pytest.raises(PoisonDetectError, match="not fitted"):
        MaxMargin(**FAST).statistics([genuine])
    with pytest.raises(PoisonDetectError, match=r"in \[0, 1\]"):
        MaxMargin(**FAST).fit(dataclasses.replace(genuine, images=genuine.images * 16))
    with pytest.raises(PoisonDetectError, match=r"shaped \(N, C, H, W\)"):
        MaxMargin(**FAST).fit(dataclasses.replace(genuine, images=genuine.images[:, 0]))
    det = MaxMargin(**{**FAST, "steps": 2}).fit(genuine, population["honest"])
    labels = genuine.labels
    with pytest.raises(PoisonDetectError, match="needs its network"):
        det.statistics([ModelRecord("x", labels, labels, images=genuine.images)])
    with pytest.raises(PoisonDetectError, match="nn.Module"):
        det.statistics([ModelRecord("x", labels, labels, network="m.pt", images=genuine.images)])
    import torch

    wider = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(SHAPE)), K + 1))
    with pytest.raises(PoisonDetectError, match="5 per-class values, the honest replicates had 4"):
        det.statistics([dataclasses.replace(genuine, name="x", network=wider.eval())])
    twin = population["honest"][0]
    with pytest.raises(PoisonDetectError, match="share a name"):
        MaxMargin(**FAST).fit(genuine, [twin, twin])
