"""Model-level detectors, population metrics (AUROC, TPR at FPR, bootstrap interval, calibrated
thresholds) and the population's names, splits and seeds, on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from poisondetect import metrics
from poisondetect.detectors import registry
from poisondetect.detectors.base import fitted_state, restore_fitted
from poisondetect.detectors.model_level import ModelRecord
from poisondetect.errors import PoisonDetectError
from poisondetect.population import (
    attack_name,
    cell_models,
    honest_name,
    model_seed,
    n_fit,
    parse_model,
    split_of,
)

# -- metrics ----------------------------------------------------------------------------------


def test_auroc_known_values_and_ties():
    assert metrics.auroc([0, 1, 2], [3, 4]) == 1.0
    assert metrics.auroc([3, 4], [0, 1, 2]) == 0.0
    # one of four pairs inverted, one tied: (2 + 0.5) / 4
    assert metrics.auroc([1, 3], [2, 3]) == pytest.approx(0.625)
    assert metrics.auroc([1, 1], [1, 1]) == 0.5
    assert np.isnan(metrics.auroc([], [1.0]))


def test_tpr_at_fpr_known_values():
    honest = np.arange(20.0)  # 0..19
    attacked = np.array([10.5, 18.5, 19.5, 25.0])
    # FPR 0: t = 19 flags 19.5 and 25
    assert metrics.tpr_at_fpr(honest, attacked, 0.0) == 0.5
    # FPR <= 0.05 allows one honest model above the threshold: t = 18 also flags 18.5
    assert metrics.tpr_at_fpr(honest, attacked, 0.05) == 0.75
    # FPR <= 0.5: t = 9 flags all four
    assert metrics.tpr_at_fpr(honest, attacked, 0.5) == 1.0
    # ties are never split: all honest scores equal to the attacked ones
    assert metrics.tpr_at_fpr([1.0, 1.0], [1.0, 1.0], 0.5) == 0.0


def test_bootstrap_interval_contains_estimate_and_narrows():
    rng = np.random.default_rng(0)

    def width(n):
        neg, pos = rng.normal(0, 1, n), rng.normal(1, 1, n)
        lo, hi = metrics.auroc_interval(neg, pos, n_boot=400, seed=1)
        assert lo <= metrics.auroc(neg, pos) <= hi
        return hi - lo

    assert width(200) < width(10)


def test_calibrated_threshold_keeps_the_false_alarm_rate():
    rng = np.random.default_rng(3)
    for fpr in (0.05, 0.1):
        rates = []
        for _ in range(200):
            thr = metrics.calibrated_threshold(rng.normal(size=99), fpr)
            rates.append(np.mean(rng.normal(size=2000) > thr))
        # the split-conformal guarantee: at most fpr on average over calibration sets
        assert np.mean(rates) <= fpr + 0.005


def test_calibrated_threshold_with_few_scores_is_the_largest():
    assert metrics.calibrated_threshold([0.3, 0.1, 0.2], 0.05) == 0.3
    with pytest.raises(PoisonDetectError, match="NaN"):
        metrics.calibrated_threshold([0.1, np.nan], 0.05)


def test_empirical_pvalue():
    assert metrics.empirical_pvalue(10.0, [1, 2, 3]) == pytest.approx(0.25)
    assert metrics.empirical_pvalue(0.0, [1, 2, 3]) == pytest.approx(1.0)


# -- detectors --------------------------------------------------------------------------------


def _record(name, acts, labels, errors=None, preds=None, weights=None):
    return ModelRecord(
        name,
        labels,
        labels if preds is None else preds,
        activations=acts,
        errors=errors,
        weights=weights,
    )


@pytest.fixture
def population():
    """M, 6 honest models (small noise on every class) and one model whose class 3 moved."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    acts = rng.normal(size=(200, 16)).astype(np.float32) + labels[:, None]
    errors = rng.gamma(2.0, 0.05, 200)
    genuine = _record("genuine", acts, labels, errors)
    honest = [
        _record(
            f"honest_paper_r{i}",
            acts + rng.normal(0, 0.05, acts.shape).astype(np.float32),
            labels,
            errors * rng.normal(1.0, 0.02) + rng.normal(0, 0.002, 200),
        )
        for i in range(6)
    ]
    moved = acts.copy()
    moved[labels == 3] += 1.5
    shifted_errors = errors.copy()
    shifted_errors[labels == 3] *= 1.6  # one class in ten... here one in five, +60 %
    attacked = _record("flip_f50_e10_r0", moved, labels, shifted_errors)
    return genuine, honest, attacked


def test_ae_class_picks_out_the_shifted_class(population):
    genuine, honest, attacked = population
    det = registry.build("model", "ae_class").fit(genuine, honest[:4])
    scores = det.score_samples(honest[4:] + [attacked])
    assert scores[-1] > 5 * max(scores[:-1].max(), 1.0)
    # the class-3 shift is what scores: with class 3 untouched the attacked model looks honest
    calm = _record("x", attacked.activations, attacked.labels, genuine.errors.copy())
    assert det.score_samples([calm])[0] < scores[-1] / 5


def test_slow_scoring_logs_its_progress(population, monkeypatch, caplog):
    """A detector that takes long per model (trigger inversion) says how far it is; a fast one
    stays quiet."""
    from poisondetect.detectors import model_level

    genuine, honest, attacked = population
    det = registry.build("model", "ae_class").fit(genuine, honest[:4])
    with caplog.at_level("INFO", logger="poisondetect.detectors.model_level"):
        det.score_samples(honest[4:] + [attacked])
    assert "models scored" not in caplog.text
    monkeypatch.setattr(model_level, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level("INFO", logger="poisondetect.detectors.model_level"):
        det.score_samples(honest[4:] + [attacked])
    assert "3 of 3 models scored" in caplog.text and "last flip_f50_e10_r0" in caplog.text


def test_ae_mean_emits_the_papers_rule_as_a_margin(population):
    genuine, honest, _ = population
    det = registry.build("model", "ae_mean").fit(genuine, honest, reference=honest[0])
    e = honest[0].errors
    tr = e.mean() + e.std()
    stats = det.statistics([honest[1], honest[0]])
    assert stats["score"][0] == pytest.approx(honest[1].errors.mean())
    # the paper's rule: mean error against Tr = mean + std of the reference fine-tune's errors
    assert stats["paper_margin"] == pytest.approx(stats["score"] - tr)
    assert stats["paper_margin"][1] < 0  # the reference itself is below its own mean + std
    with pytest.raises(PoisonDetectError, match="reference honest fine-tune"):
        registry.build("model", "ae_mean").fit(genuine, honest)


@pytest.mark.parametrize("name", ["activation_drift", "mahalanobis"])
def test_representation_detectors_are_zero_on_m_and_grow_with_a_shift(population, name):
    genuine, _, _ = population
    det = registry.build("model", name).fit(genuine)
    acts = genuine.activations
    recs = [
        _record(
            f"s{k}", acts + k * np.ones_like(acts) * (genuine.labels[:, None] == 3), genuine.labels
        )
        for k in (0.0, 0.5, 1.0, 2.0)
    ]
    stats = det.statistics(recs)
    assert stats["score"][0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(stats["score"]) > 0)
    assert np.all(stats["worst_class"][1:] > stats["score"][1:])  # confined to one class


def test_weight_distance_zero_on_m_and_grows():
    rng = np.random.default_rng(1)
    w = {"features.w": rng.normal(size=(8, 8)), "classifier.weight": rng.normal(size=(3, 8))}
    labels = np.arange(3)
    genuine = _record("genuine", None, labels, weights=w)
    det = registry.build("model", "weight_distance").fit(genuine)
    assert det.score_samples([genuine])[0] == 0.0
    last = {**w, "classifier.weight": w["classifier.weight"][[1, 0, 2]]}  # two rows swapped
    s = det.statistics([_record("x", None, labels, weights=last)])
    assert s["last_layer"][0] > s["score"][0] > 0
    with pytest.raises(PoisonDetectError, match="do not match"):
        det.score_samples([_record("y", None, labels, weights={"features.w": w["features.w"]})])


def test_prediction_change_and_accuracy_drop_see_the_last_layer():
    labels = np.repeat(np.arange(4), 5)
    genuine = _record("genuine", None, labels)
    swapped = np.where(labels == 1, 2, np.where(labels == 2, 1, labels))
    rec = _record("swapped", None, labels, preds=swapped)
    pc = registry.build("model", "prediction_change").fit(genuine).statistics([genuine, rec])
    assert pc["score"].tolist() == [0.0, 0.5] and pc["worst_class"].tolist() == [0.0, 1.0]
    assert registry.build("model", "accuracy_drop").fit(genuine).score_samples([rec])[0] == 0.5


def test_records_of_other_trigger_images_are_refused(population):
    genuine, _, _ = population
    det = registry.build("model", "activation_drift").fit(genuine)
    other = _record("x", genuine.activations, np.roll(genuine.labels, 1))
    with pytest.raises(PoisonDetectError, match="other trigger images"):
        det.score_samples([other])


def _give_networks(records) -> None:
    """A small random CNN per record (different weights for each) and the same random images."""
    import torch

    from poisondetect.models import build_model

    images = np.random.default_rng(0).random((len(records[0].labels), 1, 4, 4), dtype=np.float32)
    for i, rec in enumerate(records):
        torch.manual_seed(i)
        rec.network = build_model("cnn", 1, 5, 4, width=0.1).eval()
        rec.images = images


@pytest.mark.parametrize("name", registry.names("model"))
def test_every_detector_clones_emits_what_it_declares_and_round_trips(population, name):
    genuine, honest, attacked = population
    genuine.weights = {"classifier.weight": np.ones((2, 2))}
    for r in [*honest, attacked]:
        r.weights = {"classifier.weight": np.full((2, 2), 1.1)}
    params = {}
    if "network" in registry.get("model", name).needs:  # tiny nets, few steps
        _give_networks([genuine, *honest, attacked])
        accepted = registry.get("model", name)().get_params()
        params = {"steps": 3, "device": "cpu", "prune_after": 1, "n_images": 20}
        params = {k: v for k, v in params.items() if k in accepted}
    det = registry.build("model", name, params)
    copy = clone(det)
    assert copy.get_params() == det.get_params() and copy is not det
    context = {"reference": honest[0]} if det.uses_reference else {}
    if det.uses_shadow:
        context["shadow"] = [attacked]
    if "statistics" in det.needs:
        for i, r in enumerate([genuine, *honest, attacked]):
            r.statistics = {"a": float(i), "b": float(i % 3)}
    det.fit(genuine, honest, **context)
    assert not [k for k in vars(clone(det)) if k.endswith("_")]  # clone is unfitted
    # the statistics it emits are those the registry declares (the config's names are checked
    # against that at plan time): the main score and the sub-scores
    stats = det.statistics([attacked, *honest])
    declared = registry.emits("model", name)
    assert sorted(stats) == sorted(declared) and declared[0] == "score"
    arrays, plain = fitted_state(det)
    restored = restore_fitted(registry.build("model", name, det.get_params()), arrays, plain)
    np.testing.assert_array_equal(restored.score_samples([attacked, *honest]), stats["score"])


# -- population names, splits, seeds -------------------------------------------------------------

ML = {
    "finetune": {
        "replicates": 3,
        "variants": {"paper": {"data": "all"}, "unseen": {"data": "unseen"}},
        "sampled": {"replicates": 0},
    },
    "attacks": {
        "kinds": ["flip", "pattern"],
        "fraction": [0.05, 0.5],
        "epochs": [5],
        "replicates": 2,
        "shadow_replicates": 0,
    },
}


def test_names_parse_back():
    for name in (honest_name("lr_3x", 2), attack_name("pattern", 0.05, 10, 1), "genuine"):
        s = parse_model(name)
        assert s.name == name
    s = parse_model(attack_name("flip", 0.125, 5, 3))
    assert (s.role, s.attack, s.variant, s.fraction, s.epochs, s.replicate) == (
        "attack",
        "flip",
        None,
        0.125,
        5,
        3,
    )
    s = parse_model(honest_name("lr_3x", 2))
    assert (s.role, s.variant, s.attack, s.replicate) == ("honest", "lr_3x", None, 2)
    with pytest.raises(PoisonDetectError, match="bad model name"):
        parse_model("flip_e5")


def test_cell_models_and_splits():
    standard, new_data = cell_models(ML, "standard"), cell_models(ML, "new_data")
    assert len(standard) == 1 + 3 + 2 * 2 * 1 * 2
    assert len(new_data) == len(standard) + 3  # unseen-data variant only where M saw a share
    k = n_fit(3, 0.5)
    splits = [split_of(parse_model(m), k) for m in new_data if m.startswith("honest_paper")]
    assert splits == ["fit", "fit", "heldout"]
    assert n_fit(1, 0.5) == 1 and n_fit(10, 0.95) == 9  # always one held out when possible


def test_replicate_seeds_differ_and_reproduce():
    names = cell_models(ML, "new_data")
    seeds = [model_seed(0, m) for m in names]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [model_seed(0, m) for m in names]
    assert model_seed(1, names[1]) != seeds[1]


def test_replicates_attack_different_images():
    from poisondetect.attacks.registry import apply_attack

    rng = np.random.default_rng(0)
    x = rng.random((200, 1, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(10), 20)
    kw = dict(target_class=1, attacker_class=7, fraction=0.5, pattern_size=3, pattern_value=1.0)
    a0 = apply_attack("pattern", x, y, seed=model_seed(0, "pattern_f50_e5_r0"), **kw)
    a1 = apply_attack("pattern", x, y, seed=model_seed(0, "pattern_f50_e5_r1"), **kw)
    again = apply_attack("pattern", x, y, seed=model_seed(0, "pattern_f50_e5_r0"), **kw)
    assert not np.array_equal(a0.attacked, a1.attacked) or not np.array_equal(a0.x, a1.x)
    np.testing.assert_array_equal(a0.x, again.x)
    np.testing.assert_array_equal(a0.attacked, again.attacked)
