"""Trigger inversion (Neural Cleanse and its differential variant) on small backdoored CNNs trained
here on scikit-learn's 8x8 digits: a genuine model M, an honest fine-tune of it, and a fine-tune
on data where 10 % of the images of every class but 7 carry a 2x2 white square at a fixed position
and the label 7 (a strong all-to-one backdoor)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from sklearn.base import clone

from poisondetect.detectors import registry
from poisondetect.detectors.base import fitted_state, restore_fitted
from poisondetect.detectors.model_level import ModelRecord
from poisondetect.detectors.trigger_inversion import (
    SPREAD_FLOOR,
    DifferentialTriggerInversion,
    TriggerInversion,
    summarise,
)
from poisondetect.errors import PoisonDetectError

# it trains three small CNNs (a module fixture): the workflow tier, not make test-quick
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.workflow]

ATTACKER = 7
CORNER = (5, 5)  # top-left pixel of the planted 2x2 square
SIZE = 2
FAST = {"steps": 200, "n_images": 128, "device": "cpu", "seed": 0}


def _with(rec: ModelRecord, **fields) -> ModelRecord:
    return dataclasses.replace(rec, name="x", **fields)


def _plant(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = x.copy(), y.copy()
    r, c = CORNER
    x[idx, :, r : r + SIZE, c : c + SIZE] = 1.0
    y[idx] = ATTACKER
    return x, y


@pytest.fixture(scope="module")
def models():
    """Records of M, an honest fine-tune and a backdoored fine-tune on the digits test set."""
    import torch

    from poisondetect.classifiers import train_model
    from poisondetect.data import read_dataset
    from poisondetect.models import build_model

    torch.set_num_threads(1)
    ds = read_dataset("digits")
    x, y = ds.x_train, ds.y_train
    fit = {"batch_size": 32, "optimizer": "adam", "weight_decay": 0.0}

    torch.manual_seed(0)
    m = build_model("cnn", in_channels=1, num_classes=10, image_size=8, width=0.25)
    train_model(m, x, y, epochs=15, lr=3e-3, seed=0, **fit)

    def finetune(xs, ys):
        net = copy.deepcopy(m)
        train_model(net, xs, ys, epochs=5, lr=1e-3, seed=1, **fit)
        return net.eval()

    honest = finetune(x, y)
    rng = np.random.default_rng(0)
    idx = rng.choice(np.flatnonzero(y != ATTACKER), int(0.1 * (y != ATTACKER).sum()), replace=False)
    backdoored = finetune(*_plant(x, y, idx))
    # the backdoor works: patched test images of the other classes go to the attacker's class
    xt, yt = ds.x_test, ds.y_test
    xp, _ = _plant(xt, yt, np.arange(len(yt)))
    with torch.no_grad():
        hit = backdoored(torch.as_tensor(xp)).argmax(1).numpy()[yt != ATTACKER] == ATTACKER
        clean_hit = honest(torch.as_tensor(xp)).argmax(1).numpy()[yt != ATTACKER] == ATTACKER
    assert hit.mean() > 0.6 and clean_hit.mean() < 0.1
    return {
        name: ModelRecord(name, yt, yt, network=net.eval(), images=xt)
        for name, net in (("genuine", m), ("honest", honest), ("backdoored", backdoored))
    }


@pytest.fixture(scope="module")
def all_to_one(models):
    """Neural Cleanse (one arm per target) on the honest and the backdoored fine-tunes."""
    det = TriggerInversion(label_specific=False, **FAST).fit(models["genuine"])
    return {name: det.invert(models[name]) for name in ("honest", "backdoored")}


def test_neural_cleanse_recovers_the_planted_trigger(all_to_one):
    inv = all_to_one["backdoored"]
    assert inv.suspected_class == ATTACKER and inv.suspected_source == -1
    mask = inv.masks[inv.best]
    rows, cols = np.mgrid[: mask.shape[0], : mask.shape[1]]
    centre = np.array([(mask * rows).sum(), (mask * cols).sum()]) / mask.sum()
    planted = np.array(CORNER) + (SIZE - 1) / 2
    assert np.abs(centre - planted).max() <= 2.0, centre
    # the recovered trigger is small and works on the images it was inverted on
    assert inv.norms[inv.best] <= 2 * SIZE * SIZE
    assert inv.success[inv.best] >= 0.8


def test_neural_cleanse_flags_the_backdoored_model_not_the_honest_one(all_to_one):
    bd, honest = summarise(all_to_one["backdoored"]), summarise(all_to_one["honest"])
    assert honest["anomaly_index"] < 2.0  # Neural Cleanse's threshold on its index
    for key in ("score", "anomaly_index", "small_trigger"):
        assert bd[key] > honest[key], key
    assert all(0.0 <= s[k] <= 1.0 for s in (bd, honest) for k in ("score", "small_trigger"))


def test_statistics_are_the_summary_of_the_inversions(models, all_to_one):
    det = TriggerInversion(label_specific=False, **FAST).fit(models["genuine"])
    stats = det.statistics([models["honest"], models["backdoored"]])
    # no class index among them
    assert set(stats) == {"score", "anomaly_index", "small_trigger", "honest_z"}
    for i, name in enumerate(("honest", "backdoored")):
        for key, value in summarise(all_to_one[name]).items():
            assert stats[key][i] == pytest.approx(value)  # and the same seed, the same numbers
        # no honest replicate: honest_z is the smallest target's log norm below the median, in
        # units of the spread's floor
        v = np.log(all_to_one[name].target_norms())
        assert stats["honest_z"][i] == pytest.approx((np.median(v) - v.min()) / SPREAD_FLOOR)


def test_differential_ranks_the_backdoored_model_above_the_honest_one(models):
    recs = [models["genuine"], models["honest"], models["backdoored"]]
    det = DifferentialTriggerInversion(label_specific=False, **FAST).fit(models["genuine"])
    genuine, honest, bd = ({k: v[i] for k, v in det.statistics(recs).items()} for i in range(3))
    # shared mode: each target's norm against M's; M itself is 1 everywhere, so scores 0
    assert genuine["score"] == 0.0 and genuine["anomaly_index"] == 0.0
    for key in ("score", "anomaly_index", "small_trigger"):
        assert bd[key] > honest[key], key


def test_joint_differential_ranks_the_backdoored_model_above_the_honest_one(models):
    # joint mode with the earlier defaults (every arm runs every step)
    det = DifferentialTriggerInversion(
        label_specific=False, reference_mode="joint", converge=0, **FAST
    )
    det.fit(models["genuine"])
    invs = det.inversions([models["genuine"], models["honest"], models["backdoored"]])
    genuine, honest, bd = (summarise(inv) for inv in invs)
    # nothing moves M without moving M: no arm succeeds, every statistic is 0
    assert not invs[0].found.any() and genuine == dict.fromkeys(genuine, 0.0)
    for key in ("score", "anomaly_index", "small_trigger"):
        assert bd[key] > honest[key], key
    assert invs[2].suspected_class == ATTACKER


def test_label_specific_arms_cover_every_pair_and_find_the_attacker(models):
    det = TriggerInversion(**{**FAST, "steps": 120, "prune_after": 60}).fit(models["genuine"])
    inv = det.invert(models["backdoored"])
    pairs = set(zip(inv.sources.tolist(), inv.targets.tolist(), strict=True))
    assert pairs == {(s, t) for s in range(10) for t in range(10) if s != t}
    assert inv.target_norms().shape == (10,)
    assert inv.suspected_class == ATTACKER


def test_same_seed_same_numbers_other_seed_other_masks(models):
    params = {**FAST, "steps": 20, "prune_after": 10, "n_images": 40}
    rec = models["backdoored"]
    a = TriggerInversion(**params).fit(models["genuine"]).invert(rec)
    b = TriggerInversion(**params).fit(models["genuine"]).invert(rec)
    c = TriggerInversion(**{**params, "seed": 1}).fit(models["genuine"]).invert(rec)
    np.testing.assert_array_equal(a.norms, b.norms)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert summarise(a) == summarise(b)
    assert not np.array_equal(a.masks, c.masks)


def test_clone_get_params_and_the_registry():
    for name, cls in (
        ("trigger_inversion", TriggerInversion),
        ("differential_trigger_inversion", DifferentialTriggerInversion),
    ):
        det = registry.build("model", name, {"steps": 7}, seed=3, device="cpu", unrelated=1)
        assert type(det) is cls and cls.needs == ("network", "images")
        params = det.get_params()
        assert params["steps"] == 7 and params["seed"] == 3 and params["device"] == "cpu"
        copy_ = clone(det)
        assert copy_ is not det and copy_.get_params() == params
    assert "reference_weight" in DifferentialTriggerInversion().get_params()
    assert "reference_weight" not in TriggerInversion().get_params()


@pytest.mark.parametrize("mode", ["shared", "joint"])
def test_restored_differential_detector_rebuilds_m_from_its_fitted_state(models, mode):
    params = {**FAST, "steps": 20, "prune_after": 10, "n_images": 40, "label_specific": False}
    params["reference_mode"] = mode
    det = DifferentialTriggerInversion(**params).fit(models["genuine"])
    arrays, plain = fitted_state(det)  # M's weights or M's norms travel as an array, no pickle
    if mode == "joint":
        assert arrays["reference_state_"].dtype == np.float32
    else:
        assert arrays["reference_norms_"].shape == (10,) and "reference_state_" not in arrays
    restored = restore_fitted(DifferentialTriggerInversion(**params), arrays, plain)
    recs = [models["honest"], models["backdoored"]]
    for key, value in det.statistics(recs).items():
        np.testing.assert_array_equal(restored.statistics(recs)[key], value)


@pytest.mark.parametrize(
    ("param", "value", "match"),
    [
        ("steps", 0, "steps must be an integer >= 1"),
        ("batch_size", 2.5, "batch_size must be an integer"),
        ("n_images", True, "n_images must be an integer"),
        ("patience", -1, "patience"),
        ("prune_after", -1, "prune_after must be an integer >= 0"),
        ("seed", -2, "seed"),
        ("lr", 0, "lr must be a number > 0"),
        ("init_cost", "x", "init_cost"),
        ("cost_multiplier", 1.0, "cost_multiplier must be a number > 1"),
        ("success_threshold", 1.5, r"success_threshold must be a number in \(0, 1\]"),
        ("label_specific", "yes", "label_specific must be true or false"),
        ("converge", -1, "converge must be an integer >= 0"),
        ("converge_tol", 2.0, "converge_tol must be a number"),
        ("device", "tpu", "device 'tpu' is not one of"),
    ],
)
def test_parameters_are_validated_in_fit(models, param, value, match):
    det = TriggerInversion(**{param: value})  # stored as given
    assert det.get_params()[param] == value
    with pytest.raises(PoisonDetectError, match=match):
        det.fit(models["genuine"])


def test_bad_records_are_refused(models):
    genuine = models["genuine"]
    with pytest.raises(PoisonDetectError, match="reference_weight must be a number >= 0"):
        DifferentialTriggerInversion(reference_weight=-1.0).fit(genuine)
    with pytest.raises(PoisonDetectError, match="reference_mode must be 'shared' or 'joint'"):
        DifferentialTriggerInversion(reference_mode="both").fit(genuine)
    det = TriggerInversion(**{**FAST, "steps": 2}).fit(genuine)
    labels = genuine.labels
    with pytest.raises(PoisonDetectError, match="needs its network"):
        det.statistics([ModelRecord("x", labels, labels, images=genuine.images)])
    with pytest.raises(PoisonDetectError, match="needs its images"):
        det.statistics([ModelRecord("x", labels, labels, network=genuine.network)])
    with pytest.raises(PoisonDetectError, match="in \\[0, 1\\]"):
        det.statistics([_with(genuine, images=genuine.images * 16)])
    with pytest.raises(PoisonDetectError, match=r"shaped \(N, C, H, W\)"):
        det.statistics([_with(genuine, images=genuine.images[:, 0])])
    with pytest.raises(PoisonDetectError, match="nn.Module"):
        det.statistics(
            [ModelRecord("x", labels, labels, network="model.pt", images=genuine.images)]
        )
    with pytest.raises(PoisonDetectError, match="not fitted"):
        TriggerInversion().statistics([genuine])


def test_differential_refuses_another_architecture(models):
    from poisondetect.models import build_model

    genuine = models["genuine"]
    det = DifferentialTriggerInversion(**{**FAST, "steps": 2, "reference_mode": "joint"})
    det.fit(genuine)
    wider = build_model("cnn", in_channels=1, num_classes=10, image_size=8, width=0.5).eval()
    rec = _with(genuine, network=wider)
    with pytest.raises(PoisonDetectError, match="another architecture"):
        det.statistics([rec])


def test_networks_are_not_modified(models):
    rec = models["backdoored"]
    before = {k: v.clone() for k, v in rec.network.state_dict().items()}
    flags = [p.requires_grad for p in rec.network.parameters()]
    TriggerInversion(**{**FAST, "steps": 3}).fit(models["genuine"]).invert(rec)
    after = rec.network.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert [p.requires_grad for p in rec.network.parameters()] == flags


def test_converged_arms_stop_and_the_trigger_found_is_the_same(models):
    params = {**FAST, "steps": 300, "prune_after": 60}
    full = (
        TriggerInversion(**params, converge=0).fit(models["genuine"]).invert(models["backdoored"])
    )
    fast = TriggerInversion(**params, converge=3).fit(models["genuine"])
    early = fast.invert(models["backdoored"])
    assert full.steps_run == 300 and early.steps_run < 300  # every arm stopped before the end
    assert early.suspected_class == full.suspected_class == ATTACKER
    # the smallest trigger found stays within a factor of the one a full run finds
    assert early.norms[early.best] <= 1.5 * full.norms[full.best]
