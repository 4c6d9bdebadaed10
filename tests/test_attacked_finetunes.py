"""Attacked fine-tunes through the stage (every registered kind), and attackers who train like
honest users (``attacks.sampled``): their recipes come from the sampled honest null's draw, with
the same distribution, and are recorded as the honest ones' are."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from poisondetect import population
from poisondetect.attacks import registry
from poisondetect.config import validate_config
from poisondetect.model_level.finetunes import _as_sampled, honest_hyperparameters

ML = validate_config(
    {
        "model_level": {
            "finetune": {"sampled": {"replicates": 300}},
            "attacks": {"kinds": registry.names(), "sampled": True},
        }
    }
)["model_level"]
SAMPLED, TRAIN = ML["finetune"]["sampled"], ML["train"]


def _recipes(names, role, scenario="new_data"):
    out = []
    for n in names:
        spec = population.parse_model(n)
        spec = _as_sampled(spec) if role == "attack" else spec
        out.append(honest_hyperparameters(TRAIN, SAMPLED, spec, scenario, 0))
    return out


def test_attack_recipes_are_the_honest_draw_of_their_own_name():
    name = population.attack_name("blend", 0.5, 10, 3)
    (hp,) = _recipes([name], "attack")
    assert {k: hp[k] for k in population.draw_honest(SAMPLED, name, 0, "new_data")} == (
        population.draw_honest(SAMPLED, name, 0, "new_data")
    )
    assert hp != _recipes([population.attack_name("blend", 0.5, 10, 4)], "attack")[0]


def test_attacked_and_honest_recipes_have_the_same_distribution():
    n = 300
    honest = _recipes([population.honest_name("sampled", r) for r in range(n)], "honest")
    kinds = registry.names()
    attacked = _recipes(
        [population.attack_name(kinds[r % len(kinds)], 0.5, 10, r) for r in range(n)], "attack"
    )
    for key in ("lr_factor", "weight_decay", "lr"):
        a, h = [d[key] for d in attacked], [d[key] for d in honest]
        assert stats.ks_2samp(a, h).pvalue > 0.001, key
    for key in ("epochs", "batch_size", "optimizer", "augment", "data"):
        a, h = [d[key] for d in attacked], [d[key] for d in honest]
        levels = sorted(set(a) | set(h), key=str)
        table = np.array([[a.count(v) for v in levels], [h.count(v) for v in levels]])
        if len(levels) > 1:
            assert stats.chi2_contingency(table).pvalue > 0.001, key


def test_attacks_sampled_is_off_by_default_and_in_the_schema():
    assert validate_config({})["model_level"]["attacks"]["sampled"] is False


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """A tiny digits cell: the prepared data and a genuine CNN trained for two epochs."""
    pytest.importorskip("torch")
    from poisondetect.data import prepare_dataset
    from poisondetect.model_level.finetunes import train_genuine

    d = tmp_path_factory.mktemp("cell")
    prepare_dataset("digits", None, d / "data.npz", max_train=400, max_test=120)
    train = {**TRAIN, "epochs": 2, "batch_size": 64, "lr_milestones": []}
    trigger = {"max_samples": 60, "batch_size": 64}
    train_genuine(
        str(d / "data.npz"),
        str(d / "models/genuine.safetensors"),
        str(d / "eval/genuine.json"),
        str(d / "activations/genuine.parquet"),
        dataset="digits",
        arch="cnn",
        width=0.25,
        train=train,
        scenario="standard",
        new_data_fraction=0.5,
        trigger=trigger,
        seed=0,
        device="cpu",
    )
    return d, train, trigger


@pytest.mark.parametrize("sampled", [False, True])
def test_every_kind_fine_tunes_through_the_stage(cell, sampled):
    from poisondetect.model_level.finetunes import finetune

    d, train, trigger = cell
    block = {k: v for k, v in ML["attacks"].items() if k not in ("kinds", "epochs", "fraction")}
    block.update(
        target_class=1, attacker_class=7, pattern_size=3, clean_label_steps=2, adaptive_steps=10
    )
    recipe = {**SAMPLED, "epochs": [1, 1], "batch_size": [64], "data": ["all"]}
    models = [population.attack_name(k, 0.5, 1, 0) for k in registry.names()]
    for m in models:
        spec = population.parse_model(m)
        finetune(
            str(d / "data.npz"),
            str(d / "models/genuine.safetensors"),
            str(d),
            [m],
            device="cpu",
            train=train,
            honest=None,
            attack={
                **registry.job_settings(spec.attack, block),
                **({"recipe": recipe} if sampled else {}),
            },
            scenario="standard",
            new_data_fraction=0.5,
            trigger=trigger,
            seed=0,
        )
        ev = json.loads((d / f"eval/{m}.json").read_text())
        assert ev["model"] == m and ev["attacker_class"] == 7
        assert ev["n_attacked"] > 0
        assert 0 <= ev["attack_success_test"] <= 1 and 0 <= ev["attack_success"] <= 1
        # M's own held-out success with the same trigger, measured before the fine-tune
        assert 0 <= ev["attack_success_genuine"] <= 1
        assert ev["epochs"] == 1
        if sampled:  # the recipe recorded like an honest sampled replicate's (hp_* columns)
            hp = ev["hyperparameters"]
            assert set(population.draw_honest(recipe, m, 0, "standard")) <= set(hp)
            assert hp["lr"] == pytest.approx(
                hp["lr_factor"] * (recipe["adam_lr"] if hp["optimizer"] == "adam" else train["lr"])
            )
        else:
            assert "hyperparameters" not in ev
