"""The model-level workflow end to end through Snakemake, and the audit command on its output."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_CONFIG

from poisondetect.config import validate_config
from poisondetect.population import cell_models

CELL = "results/model_level/digits/cnn/standard/seed0"
ML_CONFIG = validate_config(TINY_CONFIG)["model_level"]
MODELS = cell_models(ML_CONFIG, "standard")


def test_detection_table_has_one_row_per_model(tiny_run):
    df = pd.read_csv(tiny_run / "results/model_level/detection.csv")
    assert sorted(df["model"]) == sorted(MODELS)
    assert len(MODELS) == 1 + 4 + 2 * 2  # genuine, 4 honest, 2 replicates of flip and pattern
    # the paper's rule and the calibrated verdict, in separate columns
    assert (df["paper_threshold"] == df["paper_threshold"].iloc[0]).all()
    assert (df["paper_flagged"] == (df["paper_score"] > df["paper_threshold"])).all()
    assert df["verdict_flagged"].dtype == bool
    assert df["accuracy"].min() > 0.5  # the tiny models did learn
    attacks = df[df["role"] == "attack"]
    assert attacks["attack_success"].between(0, 1).all()
    assert set(df["split"]) == {"genuine", "fit", "heldout", "attack"}
    # replicates differ: their own seeds give different models
    assert attacks.groupby("attack")["accuracy"].nunique().min() > 1 or (
        attacks.groupby("attack")["attack_success"].nunique().min() > 1
    )
    assert attacks["variant"].isna().all() and df.loc[df["role"] == "honest", "attack"].isna().all()


def test_scores_and_roc_tables(tiny_run):
    ml = tiny_run / "results/model_level"
    scores = pd.read_csv(ml / "scores.csv")
    # every detector, and the verdict: one statistic over the verdict's, calibrated as one
    detectors = set(ML_CONFIG["detectors"]) | {"verdict"}
    assert set(scores["detector"]) == detectors
    assert len(scores[scores["statistic"] == "score"]) == len(MODELS) * len(detectors)
    assert (
        scores["calibrated_flagged"] == (scores["value"] > scores["calibrated_threshold"])
    ).all()
    # thresholds come from the honest fitting replicate(s) only
    for _, g in scores[scores["detector"] != "verdict"].groupby(["detector", "statistic"]):
        assert g["calibrated_threshold"].iloc[0] == g.loc[g["split"] == "fit", "value"].max()
    # the per-cell table is the collected table's part (the same name, the same rows)
    cell = pd.read_csv(tiny_run / CELL / "scores.csv")
    pd.testing.assert_frame_equal(cell, scores[scores["seed"] == 0].reset_index(drop=True))
    roc = pd.read_csv(ml / "roc.csv")
    for col in ["auroc", "auroc_lo", "auroc_hi", "tpr_at_fpr", "false_alarm_rate",
                "detection_rate", "n_honest", "n_attacked", "honest_variant"]:  # fmt: skip
        assert col in roc.columns
    scored = roc[roc["n_attacked"] > 0]  # no effective attack: no AUROC
    assert scored["auroc"].between(0, 1).all()
    assert roc.loc[roc["n_attacked"] == 0, "auroc"].isna().all()
    assert set(roc["attacks"]) == {"all", "effective"}
    eff = roc[roc["attacks"] == "effective"]
    assert (eff["n_attacked"] <= 2).all() and (eff["min_success"] == 0.2).all()
    assert ((scored["auroc_lo"] <= scored["auroc"]) & (scored["auroc"] <= scored["auroc_hi"])).all()
    assert set(roc["honest_variant"]) == {"all", "paper"}
    assert (roc["n_honest"] == 4).all()
    assert (roc.loc[roc["attacks"] == "all", "n_attacked"] == 2).all()
    main = roc[~roc["detector"].str.contains(":")]
    pops, fams = main[main["scope"] == "population"], main[main["scope"] == "family"]
    # detectors x attacks x honest variants (paper, all) x subsets (all, effective)
    assert len(pops) == len(detectors) * 2 * 2 * 2
    # per family (kind): detectors x kinds x subsets, against every honest fine-tune
    assert len(fams) == len(detectors) * 2 * 2
    assert set(fams["honest_variant"]) == {"all"} and fams["fraction"].isna().all()
    # the verdict's rows: its detection and false-alarm rates with exact intervals
    v = roc[(roc["detector"] == "verdict") & (roc["n_attacked"] > 0)]
    assert v["detection_lo"].le(v["detection_rate"]).all()
    assert v["false_alarm_hi"].ge(v["false_alarm_rate"]).all()


def test_tables_figures_and_logs_exist(tiny_run):
    ml = tiny_run / "results/model_level"
    for name in ["table1_accuracy", "table2_attack_success", "table3_detection", "table_roc"]:
        assert (ml / f"{name}.csv").stat().st_size > 0
        tex = (ml / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\bottomrule" in tex
    for name in [
        "fig5_digits_cnn_standard_seed0",
        "roc_digits_cnn_standard",
        "auroc_digits_cnn_standard",
    ]:
        for ext in ("png", "pdf"):
            assert (ml / f"figures/{name}.{ext}").stat().st_size > 1000
    t1 = pd.read_csv(ml / "table1_accuracy.csv")
    assert {"Genuine", "Honest paper", "FA 50% e2", "PAA 50% e2"} <= set(t1.columns)
    assert (tiny_run / "logs/model_level/digits/cnn/standard/seed0/train_genuine.log").read_text()


def test_parquet_dump_carries_model_metadata(tiny_run):
    from poisondetect.activations import read_activations

    acts = read_activations(tiny_run / CELL / "activations/flip_f50_e2_r1.parquet")
    assert acts.metadata["model"] == "flip_f50_e2_r1" and acts.metadata["arch"] == "cnn"
    assert acts.activations.shape == (150, 128)  # 512 FC units of the paper's CNN at width 0.25
    assert acts.metadata["checkpoint"]["width"] == 0.25


def _audit(run, model, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "poisondetect",
            "audit",
            "--bundle",
            str(run / CELL / "detector.safetensors"),
            "--model",
            str(model),
            "--data",
            str(run / "results/data/digits.npz"),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_audit_reproduces_the_workflow_scores(tiny_run):
    scores = pd.read_csv(tiny_run / "results/model_level/scores.csv")
    detection = pd.read_csv(tiny_run / "results/model_level/detection.csv").set_index("model")
    verdict = ML_CONFIG["calibration"]["verdict"]
    # a held-out honest model and an attacked one: both calibrated on every fitting replicate
    for model in ("honest_paper_r3", "flip_f50_e2_r0"):
        proc = _audit(tiny_run, tiny_run / CELL / f"models/{model}.safetensors", "--json")
        assert proc.returncode in (0, 3), proc.stderr
        out = json.loads(proc.stdout)
        mine = scores[scores["model"] == model]
        for d in out["detectors"]:
            det, _, stat = d["detector"].partition(":")
            row = mine[(mine["detector"] == det) & (mine["statistic"] == (stat or "score"))]
            assert d["score"] == pytest.approx(row["value"].iloc[0], rel=1e-5, abs=1e-9)
            assert d["threshold"] == pytest.approx(row["calibrated_threshold"].iloc[0])
        # one verdict, the workflow's: the same p-value and flag
        assert out["verdict_from"] == verdict
        assert out["combine"] == ML_CONFIG["calibration"]["combine"]  # as the bundle records it
        assert out["verdict_pvalue"] == pytest.approx(detection.loc[model, "verdict_pvalue"])
        assert out["flagged"] == bool(detection.loc[model, "verdict_flagged"])
        assert out["guaranteed_fpr"] == pytest.approx(
            detection.loc[model, "verdict_guaranteed_fpr"]
        )
        assert proc.returncode == (3 if out["flagged"] else 0)  # 3: POISONED
        text = _audit(tiny_run, tiny_run / CELL / f"models/{model}.safetensors").stdout
        assert "calibrated verdict:" in text and "paper's rule" in text and "p-value" in text
        assert out["bundle_digest"] in text
        # 3 honest fitting replicates cannot promise 5 %: the audit says so, and how many can
        assert not out["fpr_reachable"] and "out of reach with 3 honest models" in text


def test_audit_flags_a_model_whose_last_layer_alone_was_altered(tiny_run, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(tiny_run / CELL / "models/genuine.safetensors")
    w, b = sd["classifier.weight"].clone(), sd["classifier.bias"].clone()
    w[[1, 7]], b[[1, 7]] = w[[7, 1]], b[[7, 1]]  # classes 1 and 7 swapped in the last layer
    sd.update({"classifier.weight": w, "classifier.bias": b})
    save_file(sd, tmp_path / "swapped.safetensors")
    genuine = json.loads(
        _audit(tiny_run, tiny_run / CELL / "models/genuine.safetensors", "--json").stdout
    )
    proc = _audit(tiny_run, tmp_path / "swapped.safetensors", "--json")
    assert proc.returncode == 3, proc.stdout + proc.stderr  # POISONED
    out = json.loads(proc.stdout)
    assert out["flagged_by"] == ["prediction_change:worst_class"]
    assert out["verdict_pvalue"] == pytest.approx(1 / 4)  # beyond the 3 honest fitting replicates
    # the auto-encoder alone is blind to it: the same activations, the same mean error
    assert out["paper"]["score"] == pytest.approx(genuine["paper"]["score"])


def test_audit_refuses_another_architecture(tiny_run):
    proc = _audit(tiny_run, tiny_run / CELL / "models/genuine.safetensors", "--arch", "resnet18")
    assert proc.returncode == 2 and "resnet18" in proc.stderr and "cnn" in proc.stderr


def test_audit_accepts_a_weights_only_state_dict(tiny_run, tmp_path):
    from safetensors.torch import load_file

    sd = load_file(tiny_run / CELL / "models/honest_paper_r0.safetensors")
    torch.save(sd, tmp_path / "plain.pt")
    proc = _audit(tiny_run, tmp_path / "plain.pt")
    assert proc.returncode in (0, 3), proc.stderr
    assert "trigger images" in proc.stdout


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_audit_refuses_a_pickled_checkpoint_that_carries_code(tiny_run, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Payload(str(marker))}, f)
    proc = _audit(tiny_run, evil)
    assert proc.returncode == 2
    assert "refusing to unpickle" in proc.stderr
    assert not marker.exists()


def test_audit_refuses_the_wrong_trigger_data(tiny_run, tmp_path):
    import numpy as np

    data = np.load(tiny_run / "results/data/digits.npz")
    arrays = {k: data[k] for k in data.files}
    arrays["x_test"] = arrays["x_test"].copy()
    arrays["x_test"][0] = 0
    np.savez(tmp_path / "other.npz", **arrays)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "poisondetect",
            "audit",
            "--bundle",
            str(tiny_run / CELL / "detector.safetensors"),
            "--model",
            str(tiny_run / CELL / "models/genuine.safetensors"),
            "--data",
            str(tmp_path / "other.npz"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "does not hold the trigger set" in proc.stderr


def test_report_states_the_population_sizes(tiny_run, tmp_path):
    import zipfile

    from conftest import snakemake

    report = tmp_path / "report.zip"
    snakemake(tiny_run, "--report", str(report))
    with zipfile.ZipFile(report) as z:
        html = next(z.read(n).decode() for n in z.namelist() if n.endswith("report.html"))
    assert "4 honest fine-tunes of each of the variants paper" in html
    assert "2 attacked fine-tunes" in html and "of each of the attacks flipping (FA)" in html
    assert "roc_digits_cnn_standard.png" in html and "table_roc.csv" in html


def test_effective_attacks_are_judged_by_the_success_the_fine_tune_added(
    tiny_run, tmp_path, caplog
):
    """Every attacked fine-tune records M's own held-out success with its trigger, and
    detection.csv the gain; a fine-tune of an earlier release (no such record) keeps its
    held-out success as the gain, with a warning that says how to rerun it."""
    import logging

    from poisondetect import population
    from poisondetect.model_level.calibration import detection_table

    df = pd.read_csv(tiny_run / "results/model_level/detection.csv")
    att = df[df["role"] == "attack"]
    assert att["attack_success_genuine"].between(0, 1).all()
    np.testing.assert_allclose(
        att["attack_success_gain"], att["attack_success_test"] - att["attack_success_genuine"]
    )
    assert df.loc[df["role"] != "attack", "attack_success_gain"].isna().all()

    metrics = []
    for m in MODELS:
        ev = json.loads((tiny_run / CELL / f"eval/{m}.json").read_text())
        if m == att["model"].iloc[0]:
            del ev["attack_success_genuine"]  # as an earlier release wrote it
        (tmp_path / f"{m}.json").write_text(json.dumps(ev))
        metrics.append(str(tmp_path / f"{m}.json"))
    scores = pd.read_csv(tiny_run / CELL / "scores.csv")
    with caplog.at_level(logging.WARNING):
        det = detection_table(
            metrics,
            scores,
            cell={"dataset": "digits", "arch": "cnn", "scenario": "standard", "seed": 0},
            n_fit_replicates=population.fit_counts(ML_CONFIG),
            paper_rule=ML_CONFIG["calibration"]["paper_rule"],
            fpr=ML_CONFIG["calibration"]["fpr"],
        )
    old = det[det["model"] == att["model"].iloc[0]].iloc[0]
    assert np.isnan(old["attack_success_genuine"])
    assert old["attack_success_gain"] == old["attack_success_test"]
    assert "1 attacked fine-tunes" in caplog.text and "--forcerun finetune_attack" in caplog.text
