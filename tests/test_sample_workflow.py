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
        for dec in ("own", "topk")
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
    from poisondetect.sample_level.poisoning import load_poisoned

    p = load_poisoned(tiny_run / "results/sample_level/digits_1v7/optimal/p3/seed0/poisoned.npz")
    n_rounds, n_train = SL["rounds"]["n_rounds"], SL["rounds"]["n_train"]
    assert p["x"].shape == (n_rounds, n_train + 3, 64)
    assert (p["is_poison"].sum(axis=1) == 3).all()
    assert (p["x"] >= 0).all() and (p["x"] <= 1).all()


def test_topk_flags_exactly_the_poison_count(tiny_run):
    scores = pd.read_parquet(
        tiny_run
        / "results/sample_level/digits_1v7/flip/p3/seed0/filter/cae_plus_contaminated.parquet"
    )
    assert set(scores["detector"]) == {"cae_plus"}
    assert {"re", "ce", "score", "flagged", "is_poison", "round"} <= set(scores.columns)
    assert set(scores["round"]) == set(
        range(SL["rounds"]["n_detector_rounds"], SL["rounds"]["n_rounds"])
    )


def test_new_baselines_are_in_every_table(tiny_run):
    out = tiny_run / "results/sample_level"
    df = pd.read_csv(out / "filtering.csv")
    for name in ("spectral_signatures", "activation_clustering"):
        assert set(df.loc[df["detector"] == name, "attack"]) == set(SL["attacks"])
    f1 = pd.read_csv(out / "digits_1v7_f1.csv", header=[0, 1], index_col=0)
    assert {"Spectral signatures", "Activation clustering"} <= set(f1.index)
    assert f1.loc["Spectral signatures"].notna().all()


def test_analyses_are_tidy_tables(tiny_run):
    out = tiny_run / "results/sample_level"
    df = pd.read_csv(out / "filtering.csv")
    abl = pd.read_csv(out / "analysis/digits_1v7_ablation.csv")
    assert list(dict.fromkeys(abl["detector"])) == ["rae", "cae", "cae_plus"]
    own = df[(df["decision"] == "own") & (df["train_on"] == "contaminated")]
    for row in abl.itertuples():
        want = own[(own["attack"] == row.attack) & (own["detector"] == row.detector)]["f1"]
        assert row.F1 == want.item()
    sweep = pd.read_csv(out / "analysis/digits_1v7_sweep.csv")
    assert set(sweep["param"]) == {"alpha"} and sweep.loc[sweep["current"], "value"].eq(0.66).all()
    # the sweep at the configured alpha is the stage's own CAE+ F1 (its own decision, the GMM)
    at = sweep[sweep["current"]].set_index("attack")["F1"]
    cae_plus = own[own["detector"] == "cae_plus"].set_index("attack")["f1"]
    assert np.allclose(at.sort_index(), cae_plus.sort_index())
    curve = pd.read_csv(out / "analysis/digits_1v7_f1_vs_k.csv")
    assert curve["K"].max() == 6 and (curve.loc[curve["K"] == 0, "F1"] == 0).all()


def test_figures_and_tables_exist(tiny_run):
    out = tiny_run / "results/sample_level"
    for i in (2, 3, 4, 5, 6, 7):
        for ext in ("png", "pdf"):
            assert (out / f"figures/digits_1v7_fig{i}.{ext}").stat().st_size > 1000
    for name in ("digits_1v7_f1", "digits_1v7_accuracy"):
        assert "\\toprule" in (out / f"{name}.tex").read_text()
