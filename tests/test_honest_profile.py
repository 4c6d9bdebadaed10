"""Trigger inversion's ``honest_z``: each target's trigger against the same target's trigger in
the honest fitting replicates (``detectors/trigger_inversion.py``). The inversions are made up
here (one per model, by name), so every number can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from poisondetect.detectors.base import fitted_state, restore_fitted
from poisondetect.detectors.inversion import Inversion
from poisondetect.detectors.model_level import ModelRecord
from poisondetect.detectors.trigger_inversion import (
    SPREAD_FLOOR,
    DifferentialTriggerInversion,
    TriggerInversion,
)
from poisondetect.errors import PoisonDetectError

K = 5
LABELS = np.repeat(np.arange(K), 4)


def _inversion(norms) -> Inversion:
    norms = np.asarray(norms, dtype=np.float64)
    k = len(norms)
    return Inversion(
        sources=np.full(k, -1), targets=np.arange(k), norms=norms, found=np.ones(k, bool),
        success=np.ones(k), masks=None, patterns=None, area=64.0,
    )  # fmt: skip


@pytest.fixture
def population(monkeypatch):
    """Norms per model: class 0 is naturally cheap in every model (M and honest), honest models
    vary, the backdoored model's class 3 is cheap; ``calls`` counts the inversions run."""
    rng = np.random.default_rng(0)
    base = np.array([8.0, 30.0, 30.0, 30.0, 30.0])
    norms = {"genuine": base}
    for i in range(8):
        norms[f"honest_{i}"] = base * np.exp(rng.normal(0, 0.1, K)) * (0.5 if i == 0 else 1.0)
    norms["backdoored"] = base * np.array([1.0, 1.0, 1.0, 0.45, 1.0])
    norms["shortcut"] = base * np.array([0.45, 1.0, 1.0, 1.0, 1.0])  # the natural one, cheaper
    calls = []

    def invert(self, rec):
        calls.append(rec.name)
        return _inversion(norms[rec.name])

    monkeypatch.setattr(TriggerInversion, "invert", invert)
    records = {m: ModelRecord(m, LABELS, LABELS) for m in norms}
    return records, norms, calls


def _profile(norms, ref=None):
    v = np.log(norms if ref is None else norms / ref)
    return v - np.median(v)


@pytest.mark.parametrize("cls", [TriggerInversion, DifferentialTriggerInversion])
def test_honest_z_is_the_largest_drop_below_the_same_class_in_honest_models(population, cls):
    records, norms, calls = population
    honest = [records[f"honest_{i}"] for i in range(8)]
    det = cls(device="cpu").fit(records["genuine"], honest)
    ref = norms["genuine"] if cls is DifferentialTriggerInversion else None
    rows = np.vstack([_profile(norms[f"honest_{i}"], ref) for i in range(8)])
    names = ["genuine", "backdoored", "shortcut", "honest_3"]
    stats = det.statistics([records[m] for m in names])
    for j, m in enumerate(names):
        # a fitting replicate is scored against the seven others
        r = np.delete(rows, 3, axis=0) if m == "honest_3" else rows
        want = (r.mean(0) - _profile(norms[m], ref)) / np.maximum(r.std(0, ddof=1), SPREAD_FLOOR)
        assert stats["honest_z"][j] == pytest.approx(want.max())
    z = dict(zip(names, stats["honest_z"], strict=True))
    assert z["backdoored"] > 5 > z["honest_3"]
    # the class that is cheap in every honest model reads as cheap only where it got cheaper
    # still (the shortcut model); `score` (smallest over the median target) cannot tell M's
    # natural shortcut from a backdoor in the plain variant
    if cls is TriggerInversion:
        assert stats["score"][0] == pytest.approx(1 - 8 / 30) and z["genuine"] < 2
    # each model inverted once (M at fit in the differential variant, else when scored; the
    # honest replicates at fit, not again when scored)
    assert sorted(calls) == sorted(["genuine", "backdoored", "shortcut", *(h.name for h in honest)])


def test_the_fitted_state_keeps_the_honest_profiles(population):
    records, _, _ = population
    honest = [records[f"honest_{i}"] for i in range(8)]
    det = DifferentialTriggerInversion(device="cpu").fit(records["genuine"], honest)
    arrays, plain = fitted_state(det)
    assert arrays["honest_profiles_"].shape == (8, K) and len(plain["honest_models_"]) == 8
    back = restore_fitted(DifferentialTriggerInversion(device="cpu"), arrays, plain)
    recs = [records["backdoored"], records["honest_0"]]
    for k, v in det.statistics(recs).items():
        np.testing.assert_allclose(back.statistics(recs)[k], v)


def test_fewer_than_two_honest_replicates_and_mismatched_classes(population):
    records, norms, _ = population
    one = TriggerInversion(device="cpu").fit(records["genuine"], [records["honest_1"]])
    p, h = _profile(norms["backdoored"]), _profile(norms["honest_1"])
    assert one.statistics([records["backdoored"]])["honest_z"][0] == pytest.approx(
        ((h - p) / SPREAD_FLOOR).max()
    )
    none = DifferentialTriggerInversion(device="cpu").fit(records["genuine"])
    p = _profile(norms["backdoored"], norms["genuine"])  # against M's flat profile
    assert none.statistics([records["backdoored"]])["honest_z"][0] == pytest.approx(
        (-p / SPREAD_FLOOR).max()
    )
    restored = restore_fitted(TriggerInversion(device="cpu"), *fitted_state(one))
    del restored.honest_profiles_  # a state saved before honest_z existed
    with pytest.raises(PoisonDetectError, match="rerun its scoring job"):
        restored.statistics([records["backdoored"]])
    odd = ModelRecord("odd", LABELS, LABELS)
    norms["odd"] = np.ones(K + 1)
    with pytest.raises(PoisonDetectError, match="per-class values"):
        one.statistics([odd])


def test_fit_says_how_far_it_is_through_the_honest_replicates(population, monkeypatch, caplog):
    import logging

    from poisondetect.detectors import model_level

    records, _, _ = population
    monkeypatch.setattr(model_level, "PROGRESS_SECONDS", 0.0)
    honest = [records[f"honest_{i}"] for i in range(3)]
    with caplog.at_level(logging.INFO, logger="poisondetect.detectors.model_level"):
        TriggerInversion(device="cpu").fit(records["genuine"], honest)
    lines = [r.getMessage() for r in caplog.records]
    assert any("trigger_inversion (honest replicates): 3 of 3 models" in x for x in lines), lines
    assert any(x.endswith("last honest_2)") for x in lines), lines
