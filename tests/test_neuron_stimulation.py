"""Neuron stimulation (detectors.neuron_stimulation) on small networks built by hand: a channel
wired to one class is found and flagged against honest replicates, the fast pass (the network
below the layer run once) equals running the whole network for every raised channel, ``auto``
picks a cut of the network and a layer that is not one is refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.base import clone

from poisondetect.detectors import registry
from poisondetect.detectors.base import fitted_state, restore_fitted
from poisondetect.detectors.model_level import ModelRecord
from poisondetect.detectors.neuron_stimulation import NeuronStimulation, elevations, find_layer
from poisondetect.errors import PoisonDetectError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 4  # classes
C = 3  # channels of the stimulated layer
FAST = {"n_images": 16, "multipliers": [1.0, 4.0, 16.0], "seed": 0, "device": "cpu"}


def _net(conv: np.ndarray, head: np.ndarray, bias: np.ndarray):
    """1x4x4 images -> 1x1 convolution to C channels -> ReLU -> 2x2 max-pool (the layer ``auto``
    picks: ``"2"``) -> a linear head to K classes."""
    import torch
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(1, C, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(C * 4, K)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.as_tensor(conv, dtype=torch.float32).view(C, 1, 1, 1))
        net[0].bias.zero_()
        net[4].weight.copy_(torch.as_tensor(head, dtype=torch.float32))
        net[4].bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return net.eval()


def _record(name: str, net) -> ModelRecord:
    labels = np.arange(16) % K
    images = np.random.default_rng(1).random((16, 1, 4, 4)).astype(np.float32)
    return ModelRecord(name, labels, labels, network=net, images=images)


@pytest.fixture(scope="module")
def population():
    """M, eight honest fine-tunes (small changes of every weight) and a backdoored one whose
    channel 2 now feeds class 2 strongly (what a trigger that lights that channel teaches)."""
    rng = np.random.default_rng(0)
    conv, head, bias = rng.uniform(0.5, 1, C), rng.normal(0, 0.3, (K, C * 4)), np.zeros(K)

    def moved():
        return _net(conv + rng.normal(0, 0.02, C), head + rng.normal(0, 0.05, head.shape), bias)

    honest = [_record(f"honest_{i}", moved()) for i in range(8)]
    bad_head = head + rng.normal(0, 0.05, head.shape)
    bad_head[2, 8:12] += 3.0  # channel 2's four positions -> class 2
    return {
        "genuine": _record("genuine", _net(conv, head, bias)),
        "honest": honest,
        "backdoored": _record("backdoored", _net(conv, bad_head, bias)),
    }


def test_a_channel_wired_to_one_class_is_found_and_flagged(population):
    det = NeuronStimulation(**FAST).fit(population["genuine"], population["honest"])
    assert det.layer_ == "2"  # auto: the max-pool, the first output narrower than the image
    raised = det.elevations(population["backdoored"])
    assert raised.shape == (K,) and np.argmax(raised) == 2 and raised[2] > 0.9
    honest = det.statistics(population["honest"])  # each against the other seven
    bad = det.statistics([population["backdoored"]])
    assert bad["honest_z"][0] > 3 * max(honest["honest_z"].max(), 1.0)
    assert bad["score"][0] > honest["score"].max()
    # M against itself: every elevation equals M's, so every statistic is 0
    m = det.statistics([population["genuine"]])
    assert m["score"][0] == 0.0


def _whole_network(net, x, y, layer, multipliers):
    """The definition, slowly: for every channel and multiplier, the whole network on the images
    with that channel's map replaced; each class's largest mean probability over the images of
    the other classes."""
    import torch

    module = dict(net.named_modules())[layer]
    xs = torch.from_numpy(x)
    with torch.no_grad():
        seen = {}
        handle = module.register_forward_hook(lambda m, i, o: seen.setdefault("h", o.clone()))
        net(xs)
        handle.remove()
        h = seen["h"]
        peak = h.flatten(2).amax(dim=(0, 2)).clamp_min(1e-3)
        best = np.zeros(net(xs).shape[1])
        for j in range(h.shape[1]):
            for k in multipliers:

                def swap(m, i, o, j=j, k=k):
                    o = o.clone()
                    o[:, j] = k * peak[j]
                    return o

                handle = module.register_forward_hook(swap)
                p = torch.softmax(net(xs), 1).numpy()
                handle.remove()
                for t in range(len(best)):
                    best[t] = max(best[t], p[y != t, t].mean())
    return best


def test_the_fast_pass_equals_running_the_whole_network_for_every_raised_channel():
    import torch

    from poisondetect.models import build_model

    torch.manual_seed(0)
    net = build_model("cnn", 1, 10, 8, 0.25).eval()
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8)).astype(np.float32)
    y = np.arange(20) % 10
    layer = find_layer(net, torch.from_numpy(x))
    assert layer == "features.4"
    fast = elevations(net, x, y, layer=layer, multipliers=[1.0, 8.0], device="cpu")
    np.testing.assert_allclose(fast, _whole_network(net, x, y, layer, [1.0, 8.0]), rtol=1e-4)


def test_auto_picks_a_whole_block_of_a_resnet_and_a_layer_inside_a_block_is_refused():
    import torch

    from poisondetect.models import build_model

    torch.manual_seed(0)
    net = build_model("resnet18", 1, 10, 8, 0.125).eval()
    x = np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32)
    y = np.arange(8) % 10
    layer = find_layer(net, torch.from_numpy(x))
    assert layer == "layer2.0"  # the first downsampling block, never a layer inside it
    assert elevations(net, x, y, layer=layer, multipliers=[2.0], device="cpu").shape == (10,)
    with pytest.raises(PoisonDetectError, match="not a cut of the network"):
        elevations(net, x, y, layer="layer2.0.conv1", multipliers=[2.0], device="cpu")
    with pytest.raises(PoisonDetectError, match="no module 'layer9'"):
        elevations(net, x, y, layer="layer9", multipliers=[2.0], device="cpu")
    with pytest.raises(PoisonDetectError, match="no channel map"):
        elevations(net, x, y, layer="classifier", multipliers=[2.0], device="cpu")


def test_a_network_that_never_downsamples_needs_a_named_layer(population):
    import torch
    from torch import nn

    flat = nn.Sequential(nn.Flatten(), nn.Linear(16, K)).eval()
    rec = dataclasses.replace(population["genuine"], network=flat)
    with pytest.raises(PoisonDetectError, match="name the layer"):
        find_layer(flat, torch.zeros(1, 1, 4, 4))
    with pytest.raises(PoisonDetectError, match="name the layer"):
        NeuronStimulation(**FAST).fit(rec)


def test_a_fitting_replicate_is_scored_against_the_others(population):
    honest = population["honest"]
    det = NeuronStimulation(**FAST).fit(population["genuine"], honest)
    inside = det.statistics([honest[0]])["honest_z"][0]
    outside = NeuronStimulation(**FAST).fit(population["genuine"], honest[1:])
    np.testing.assert_allclose(outside.statistics([honest[0]])["honest_z"][0], inside)


def test_restored_detector_gives_the_same_statistics_and_the_network_is_not_modified(population):
    rec = population["backdoored"]
    before = {k: v.clone() for k, v in rec.network.state_dict().items()}
    det = NeuronStimulation(**FAST).fit(population["genuine"], population["honest"])
    arrays, plain = fitted_state(det)  # M's elevations and the honest profiles: no pickle
    assert arrays["honest_profiles_"].shape == (8, K) and arrays["reference_"].shape == (K,)
    restored = restore_fitted(NeuronStimulation(**FAST), arrays, plain)
    recs = [rec, population["honest"][3]]
    for key, value in det.statistics(recs).items():
        np.testing.assert_array_equal(restored.statistics(recs)[key], value)
    after = rec.network.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)


def test_kept_elevations_are_read_back_instead_of_searched_again(population, tmp_path, monkeypatch):
    from poisondetect.detectors import neuron_stimulation

    digest = lambda r: r.name  # noqa: E731 - what the model is, for the store
    det = NeuronStimulation(**FAST)
    det.keep_searches(str(tmp_path), digest)
    det.fit(population["genuine"], population["honest"])
    first = det.statistics([population["backdoored"]])
    assert (tmp_path / "elevations" / "backdoored.json").exists()

    def fail(*a, **k):
        raise AssertionError("searched again")

    monkeypatch.setattr(neuron_stimulation, "elevations", fail)
    again = NeuronStimulation(**FAST)
    again.keep_searches(str(tmp_path), digest)
    again.fit(population["genuine"], population["honest"])
    np.testing.assert_array_equal(again.statistics([population["backdoored"]])["honest_z"],
                                  first["honest_z"])  # fmt: skip
    other = NeuronStimulation(**{**FAST, "multipliers": [2.0]})  # another search: not kept
    other.keep_searches(str(tmp_path), digest)
    with pytest.raises(AssertionError, match="searched again"):
        other.fit(population["genuine"])


def test_clone_get_params_and_the_registry():
    det = registry.build("model", "neuron_stimulation", {"n_images": 7}, seed=3, device="cpu")
    assert type(det) is NeuronStimulation and NeuronStimulation.needs == ("network", "images")
    params = det.get_params()
    assert params["n_images"] == 7 and params["seed"] == 3 and params["layer"] == "auto"
    assert clone(det).get_params() == params
    assert registry.emits("model", "neuron_stimulation") == ("score", "honest_z")


@pytest.mark.parametrize(
    ("param", "value", "match"),
    [
        ("n_images", 1, "n_images must be an integer >= 2"),
        ("seed", -1, "seed"),
        ("layer", "", "layer must be a module name or auto"),
        ("layer", 3, "layer must be a module name or auto"),
        ("layer", "nope", "no module 'nope'"),
        ("multipliers", [], "non-empty list of positive numbers"),
        ("multipliers", [1.0, 0.0], "non-empty list of positive numbers"),
        ("multipliers", "16", "non-empty list of positive numbers"),
        ("multipliers", [True], "non-empty list of positive numbers"),
        ("device", "tpu", "device 'tpu' is not one of"),
    ],
)
def test_parameters_are_checked_in_fit(population, param, value, match):
    det = NeuronStimulation(**{**FAST, param: value})  # stored as given
    assert det.get_params()[param] == value
    with pytest.raises(PoisonDetectError, match=match):
        det.fit(population["genuine"])
