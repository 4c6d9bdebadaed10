"""The sampled honest null and the attacks on unknown class pairs (issue: catch the attacks that
work): every draw is reproducible from the seed, within its configured range, and differs between
replicates; shadow attacks never share a class pair with an evaluated attack."""

from __future__ import annotations

import math

import pytest

from poisondetect import population
from poisondetect.config import validate_config
from poisondetect.errors import PoisonDetectError

ML = validate_config(
    {
        "model_level": {
            "scenarios": ["new_data"],
            "finetune": {"replicates": 2, "sampled": {"replicates": 40}},
            "attacks": {
                "replicates": 5,
                "shadow_replicates": 2,
                "target_class": "random",
                "attacker_class": "random",
            },
        }
    }
)["model_level"]
SAMPLED = ML["finetune"]["sampled"]


def _draws(scenario="new_data", seed=0):
    return [
        population.draw_honest(SAMPLED, population.honest_name("sampled", r), seed, scenario)
        for r in range(SAMPLED["replicates"])
    ]


def test_sampled_hyperparameters_reproduce_stay_in_range_and_differ():
    draws = _draws()
    assert draws == _draws()  # the same seed, the same draws
    assert draws != _draws(seed=1)  # another cell seed, other draws
    lo, hi = SAMPLED["lr_factor"]
    for d in draws:
        assert lo <= d["lr_factor"] <= hi
        assert SAMPLED["epochs"][0] <= d["epochs"] <= SAMPLED["epochs"][1]
        assert d["batch_size"] in SAMPLED["batch_size"]
        assert 0 <= d["weight_decay"] <= SAMPLED["weight_decay"][1]
        assert d["optimizer"] in SAMPLED["optimizer"] and d["data"] in SAMPLED["data"]
    # replicates differ, and the choices are all drawn over 40 replicates
    assert len({d["lr_factor"] for d in draws}) == len(draws)
    for key in ("optimizer", "augment", "data"):
        assert {d[key] for d in draws} == set(SAMPLED[key])
    # log-uniform: about as many draws below the geometric mean of the range as above it
    below = sum(d["lr_factor"] < math.sqrt(lo * hi) for d in draws)
    assert 10 <= below <= 30


def test_unseen_data_is_only_drawn_where_the_scenario_has_it():
    assert {d["data"] for d in _draws("standard")} == {"all"}


def test_the_sampled_null_is_its_own_population_with_its_own_split():
    names = population.cell_models(ML, "new_data")
    sampled = [m for m in names if m.startswith("honest_sampled_r")]
    assert len(sampled) == 40
    counts = population.fit_counts(ML)
    assert counts["sampled"] == 20 and counts["paper"] == 1 and counts["shadow"] == 2
    splits = [population.split_of(population.parse_model(m), counts) for m in sampled]
    assert splits.count("fit") == 20 and splits.count("heldout") == 20


def _pairs(names, num_classes=10, exclude=frozenset(), shadow=False):
    atk = ML["attacks"]
    return [
        population.attack_classes(atk, n, 0, num_classes, shadow=shadow, exclude=exclude)
        for n in names
    ]


def test_random_class_pairs_are_distinct_reproducible_and_vary():
    evaluated = population.evaluated_attacks(ML)
    pairs = _pairs(evaluated)
    assert pairs == _pairs(evaluated)
    assert all(t != a and 0 <= t < 10 and 0 <= a < 10 for t, a in pairs)
    assert len(set(pairs)) > len(pairs) // 2  # replicates draw their own pairs
    fixed = {**ML["attacks"], "target_class": 3, "attacker_class": 5}
    assert population.attack_classes(fixed, evaluated[0], 0, 10) == (3, 5)


def test_shadow_attacks_avoid_every_evaluated_pair():
    evaluated = set(_pairs(population.evaluated_attacks(ML)))
    specs = [population.parse_model(m) for m in population.cell_models(ML, "standard")]
    shadows = [s.name for s in specs if s.role == "attack" and s.replicate < 2]
    assert len(shadows) == 2 * 4  # 2 shadow replicates of each of the 4 attack populations
    counts = population.fit_counts(ML)
    assert all(population.split_of(population.parse_model(m), counts) == "shadow" for m in shadows)
    pairs = _pairs(shadows, exclude=evaluated, shadow=True)
    assert not set(pairs) & evaluated
    with pytest.raises(PoisonDetectError, match="no pair is left"):
        _pairs(shadows[:1], num_classes=2, exclude={(0, 1), (1, 0)}, shadow=True)


def test_reserved_names_and_ranges_are_checked():
    with pytest.raises(PoisonDetectError, match="reserved name"):
        validate_config({"model_level": {"finetune": {"variants": {"paper": {}, "sampled": {}}}}})
    with pytest.raises(PoisonDetectError, match="lr_factor"):
        validate_config({"model_level": {"finetune": {"sampled": {"lr_factor": [0.5, 0.1]}}}})
    with pytest.raises(PoisonDetectError, match="shadow_replicates"):
        validate_config({"model_level": {"attacks": {"replicates": 2, "shadow_replicates": 2}}})
