"""A costly detector (trigger inversion: seconds per model) keeps each model's statistics under a
key of everything they depend on, so a rerun after the attacks changed scores only the models
that changed, with the same numbers."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from poisondetect.detectors.model_level import ModelRecord
from poisondetect.detectors.trigger_inversion import TriggerInversion
from poisondetect.model_level.scoring import fit_and_score

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARAMS = {"steps": 3, "n_images": 20, "prune_after": 1, "device": "cpu"}


@pytest.fixture
def records():
    import torch

    from poisondetect.models import build_model

    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8), dtype=np.float32)
    y = np.arange(40) % 4
    out = {}
    for i, name in enumerate(["genuine", "honest_paper_r0", "honest_paper_r1", "flip_f50_e2_r0"]):
        torch.manual_seed(i)
        net = build_model("cnn", in_channels=1, num_classes=4, image_size=8, width=0.25).eval()
        out[name] = ModelRecord(name, y, y, network=net, images=x)
    return out


def _calls(monkeypatch, cls, method: str) -> list[str]:
    """The names of the records ``cls.method(rec)`` is called with, from now on (in order)."""
    names, real = [], getattr(cls, method)
    monkeypatch.setattr(cls, method, lambda self, rec: names.append(rec.name) or real(self, rec))
    return names


def test_kept_statistics_are_reused_and_only_changed_models_rescored(
    records, tmp_path, monkeypatch
):
    import torch

    calls = _calls(monkeypatch, TriggerInversion, "_one")
    cache = str(tmp_path / "cache")
    run = dict(run={"seed": 0}, cache=cache)
    _, first = fit_and_score("trigger_inversion", PARAMS, records, 1, **run)
    assert sorted(calls) == sorted(records)  # every model scored once
    calls.clear()
    _, again = fit_and_score("trigger_inversion", PARAMS, records, 1, **run)
    assert calls == []  # nothing scored again
    assert first.equals(again)
    # the attacked model changed (a new attack): it alone is scored again
    changed = dict(records)
    net = copy.deepcopy(records["flip_f50_e2_r0"].network)
    with torch.no_grad():
        net.classifier.weight.mul_(2.0)
    changed["flip_f50_e2_r0"] = ModelRecord(
        "flip_f50_e2_r0", records["genuine"].labels, records["genuine"].preds, network=net,
        images=records["genuine"].images,
    )  # fmt: skip
    _, third = fit_and_score("trigger_inversion", PARAMS, changed, 1, **run)
    assert calls == ["flip_f50_e2_r0"]
    honest = third["model"] != "flip_f50_e2_r0"
    assert third[honest].reset_index(drop=True).equals(first[honest].reset_index(drop=True))
    # other parameters: nothing is reused
    calls.clear()
    fit_and_score("trigger_inversion", {**PARAMS, "steps": 4}, records, 1, **run)
    assert sorted(calls) == sorted(records)


def test_a_damaged_cache_entry_is_scored_again(records, tmp_path):
    cache = tmp_path / "cache"
    _, first = fit_and_score(
        "trigger_inversion", PARAMS, records, 1, run={"seed": 0}, cache=str(cache)
    )
    (cache / "honest_paper_r0.json").write_text("{not json")
    _, again = fit_and_score(
        "trigger_inversion", PARAMS, records, 1, run={"seed": 0}, cache=str(cache)
    )
    assert first.equals(again)


def test_inversions_are_kept_apart_from_the_statistics_and_reused(records, tmp_path, monkeypatch):
    """Trigger inversion keeps each model's inversion too (cache/<detector>/inversions/): when
    the statistics cannot be reused (the fitted state changed: here M, which the differential
    variant's ratios are relative to), no model whose network is unchanged is inverted again."""
    from poisondetect.detectors.trigger_inversion import DifferentialTriggerInversion as DTI

    calls = _calls(monkeypatch, DTI, "invert")
    cache = tmp_path / "cache"
    run = dict(run={"seed": 0}, cache=str(cache))
    name = "differential_trigger_inversion"
    _, first = fit_and_score(name, PARAMS, records, 1, **run)
    assert sorted(calls) == sorted(records)  # M at fit, then every model
    assert sorted(p.stem for p in (cache / "inversions").glob("*.json")) == sorted(records)
    # the statistics are kept under M's norms: drop them, the inversions alone are reused
    for p in cache.glob("*.json"):
        p.unlink()
    calls.clear()
    _, again = fit_and_score(name, PARAMS, records, 1, **run)
    assert calls == []
    assert first.equals(again)
    # a damaged inversion entry and other parameters: inverted again
    damaged = cache / "inversions" / "honest_paper_r1.json"
    entry = json.loads(damaged.read_text())
    entry["value"]["norms"] = entry["value"]["norms"][:-1]  # its key still matches
    damaged.write_text(json.dumps(entry))
    for p in cache.glob("*.json"):
        p.unlink()
    _, third = fit_and_score(name, PARAMS, records, 1, **run)
    assert calls == ["honest_paper_r1"]
    assert first.equals(third)
    calls.clear()
    fit_and_score(name, {**PARAMS, "steps": 4}, records, 1, **run)
    assert sorted(calls) == sorted(records)


def test_kept_statistics_of_other_detector_code_are_scored_again(records, tmp_path, monkeypatch):
    """An edit to the detectors' code (a statistic added or changed) makes the kept statistics
    stale: every model's are computed again, from the kept inversions (none inverted again)."""
    from poisondetect.model_level import scoring

    cache = str(tmp_path / "cache")
    fit_and_score("trigger_inversion", PARAMS, records, 1, run={"seed": 0}, cache=cache)
    calls = _calls(monkeypatch, TriggerInversion, "_one")
    inverted = _calls(monkeypatch, TriggerInversion, "invert")
    fit_and_score("trigger_inversion", PARAMS, records, 1, run={"seed": 0}, cache=cache)
    assert calls == [] and inverted == []
    assert len(scoring.detectors_code_digest()) == 16
    monkeypatch.setattr(scoring, "detectors_code_digest", lambda: "an edited release")
    fit_and_score("trigger_inversion", PARAMS, records, 1, run={"seed": 0}, cache=cache)
    assert sorted(calls) == sorted(records) and inverted == []


def test_max_margin_keeps_each_models_margins_and_a_new_honest_set_searches_none_again(
    records, tmp_path, monkeypatch
):
    """The maximum-margin search keeps each model's margins too (cache/<detector>/margins/):
    when the statistics cannot be reused (another honest population: here one replicate fewer
    fits), no model is searched again; a damaged entry and other parameters are."""
    from poisondetect.detectors.max_margin import MaxMargin

    calls = _calls(monkeypatch, MaxMargin, "margins")
    cache = tmp_path / "cache"
    run = dict(run={"seed": 0}, cache=str(cache))
    params = {"steps": 5, "device": "cpu"}
    _, first = fit_and_score("max_margin", params, records, 2, **run)
    assert sorted(calls) == sorted(records)  # each model searched once (the honest ones at fit)
    assert sorted(p.stem for p in (cache / "margins").glob("*.json")) == sorted(records)
    calls.clear()
    _, fewer = fit_and_score("max_margin", params, records, 1, **run)  # other honest profiles
    assert calls == []
    assert not fewer.equals(first)  # the statistics were computed again, from kept margins
    _, again = fit_and_score("max_margin", params, records, 2, **run)
    assert first.equals(again)
    damaged = cache / "margins" / "honest_paper_r1.json"
    entry = json.loads(damaged.read_text())
    entry["value"] = entry["value"][:-1] + ["NaN"]  # its key still matches
    damaged.write_text(json.dumps(entry))
    for p in cache.glob("*.json"):
        p.unlink()
    _, third = fit_and_score("max_margin", params, records, 2, **run)
    assert calls == ["honest_paper_r1"]
    assert first.equals(third)
    calls.clear()
    fit_and_score("max_margin", {**params, "steps": 6}, records, 2, **run)
    assert sorted(calls) == sorted(records)
