"""The sample-level part of the workflow end to end (tiny config, run by the session fixture)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import TINY_CONFIG

SL = TINY_CONFIG["sample_level"]


def test_filtering_table_covers_the_grid(tiny_run):
    df = pd.read_csv(tiny_run / "results/sample_level/filtering.csv")
    for col in [
        "task",
        "attack",
        "poison_rate",
        "detector",
        "decision",
        "seed",
        "precision",
        "recall",
        "f1",
        "auroc",
        "svm_accuracy",
        "undefended_accuracy",
        "clean_accuracy",
    ]:
        assert col in df.columns
    det = df[df["detector"] != "none"]
    expected = {
        (a, d, dec, t)
        for a in SL["attacks"]
        for d in SL["detectors"]
        for dec in ("gmm", "topk")
        for t in SL["train_on"]
    }
    assert (
        set(zip(det["attack"], det["detector"], det["decision"], det["train_on"], strict=True))
        == expected
    )
    assert len(det) == len(expected)  # one row each
    none = df[df["detector"] == "none"]
    assert sorted(none["attack"]) == sorted(SL["attacks"])
    assert np.allclose(none["svm_accuracy"], none["undefended_accuracy"])
    assert (
        det[["precision", "recall", "f1", "svm_accuracy"]]
        .apply(lambda c: c.between(0, 1))
        .all()
        .all()
    )
    assert (df["poison_rate"] == 3 / 30).all()


def test_poisoned_rounds_are_cached_with_their_masks(tiny_run):
    from poisondetect.sample_level import load_poisoned

    p = load_poisoned(tiny_run / "results/sample_level/digits_1v7/optimal/p3/seed0/poisoned.npz")
    n_rounds, n_train = SL["rounds"]["n_rounds"], SL["rounds"]["n_train"]
    assert p["x"].shape == (n_rounds, n_train + 3, 64)
    assert (p["is_poison"].sum(axis=1) == 3).all()
    assert (p["x"] >= 0).all() and (p["x"] <= 1).all()


def test_topk_flags_exactly_the_poison_count(tiny_run):
    scores = pd.read_parquet(
        tiny_run / "results/sample_level/digits_1v7/flip/p3/seed0/filter/cae_contaminated.parquet"
    )
    assert set(scores["detector"]) == {"rae", "cae", "cae_plus"}
    assert {"re", "ce", "score", "is_poison", "round"} <= set(scores.columns)
    assert set(scores["round"]) == set(
        range(SL["rounds"]["n_detector_rounds"], SL["rounds"]["n_rounds"])
    )


def test_figures_and_tables_exist(tiny_run):
    out = tiny_run / "results/sample_level"
    for i in (2, 3, 4, 5, 6, 7):
        for ext in ("png", "pdf"):
            assert (out / f"figures/digits_1v7_fig{i}.{ext}").stat().st_size > 1000
    for name in ("digits_1v7_f1", "digits_1v7_accuracy"):
        assert "\\toprule" in (out / f"{name}.tex").read_text()
