"""Calibration stage: every detector statistic of a cell gets a threshold from the honest fitting
replicates, at a configured false-alarm rate; the cell's tables and the audit bundle are written.

Outputs of one cell:
- ``scores.csv``: one row per model and detector statistic, with its calibrated threshold, flag
  and empirical p-value (``calibrated_threshold``, ``calibrated_flagged``, ``pvalue``);
- ``detection.csv``: one row per model (the paper's Tables 1-3): accuracy, attack success, the
  paper's rule (``paper_score`` against ``paper_threshold``, ``paper_flagged``) and, separately,
  the calibrated verdict (``verdict_flagged``: any of ``calibration.verdict`` flags);
- ``detector.safetensors``: the auto-encoder, every detector's fitted state and the calibration,
  with a content digest (``poisondetect.bundles``), for ``audit``.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from poisondetect.detectors.base import parse_statistic
from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path, read_json, sha256_array
from poisondetect.model_level.cell import BUNDLE_KIND, STATE_KIND, trigger_set
from poisondetect.population import parse_model, split_of

log = logging.getLogger(__name__)

# what a model's name says, as columns of the cell's tables
SPEC_COLUMNS = ("role", "variant", "attack", "replicate", "fraction", "epochs")


def calibrate_scores(df: pd.DataFrame, fpr: float) -> tuple[pd.DataFrame, dict]:
    """Thresholds per (detector, statistic) from the honest fitting replicates; flags and
    empirical p-values of every model. ``df`` has columns model, split, detector, statistic,
    value. Returns the scored table and, per "detector:statistic", the threshold and the honest
    scores it came from (what the audit bundle stores)."""
    from poisondetect.metrics import calibrated_threshold, empirical_pvalue

    out, thresholds = [], {}
    for (det, stat), g in df.groupby(["detector", "statistic"], sort=False):
        ref = g[g["split"] == "fit"]
        thr = calibrated_threshold(ref["value"], fpr)
        thresholds[f"{det}:{stat}"] = {
            "threshold": thr,
            "honest_scores": [float(v) for v in ref["value"]],
        }
        g = g.assign(calibrated_threshold=thr, calibrated_flagged=g["value"] > thr)
        # rank among the honest fitting replicates (a fitting replicate among the others)
        g["pvalue"] = [
            empirical_pvalue(v, ref.loc[ref["model"] != m, "value"])
            if len(ref) > 1 or m not in set(ref["model"])
            else np.nan
            for m, v in zip(g["model"], g["value"], strict=True)
        ]
        out.append(g)
    return pd.concat(out, ignore_index=True), thresholds


def _with_spec(
    df: pd.DataFrame, cell: dict, n_fit_replicates: int | dict[str, int]
) -> pd.DataFrame:
    """``df`` (a ``model`` column) with the cell's keys first and what each model's name says."""
    specs = {m: parse_model(m) for m in df["model"].unique()}
    df = df.copy()
    if "split" not in df:
        df["split"] = df["model"].map(lambda m: split_of(specs[m], n_fit_replicates))
    for key in SPEC_COLUMNS:
        df[key] = df["model"].map(lambda m, k=key: getattr(specs[m], k))
    df[["replicate", "epochs"]] = df[["replicate", "epochs"]].astype("Int64")
    for k, v in reversed(list(cell.items())):
        df.insert(0, k, v)
    return df


def scores_table(
    score_files: list[str], *, cell: dict, fpr: float, n_fit_replicates: int | dict[str, int]
) -> tuple[pd.DataFrame, dict]:
    """The calibrated scores of every detector of a cell (each file names its detector)."""
    df = pd.concat([pd.read_csv(p) for p in score_files], ignore_index=True)
    specs = {m: parse_model(m) for m in df["model"].unique()}
    df["split"] = df["model"].map(lambda m: split_of(specs[m], n_fit_replicates))
    df, thresholds = calibrate_scores(df, fpr)
    return _with_spec(df, cell, n_fit_replicates), thresholds


def _statistic(scores: pd.DataFrame, name: str) -> pd.Series:
    """One detector statistic's rows of the scores table (``name``: detector or detector:stat),
    indexed by model."""
    det, stat = parse_statistic(name)
    rows = scores[(scores["detector"] == det) & (scores["statistic"] == stat)]
    return rows.set_index("model")


def detection_table(
    metrics: list[str],
    scores: pd.DataFrame,
    *,
    cell: dict,
    n_fit_replicates: int | dict[str, int],
    paper_rule: str,
    verdict: list[str],
) -> pd.DataFrame:
    """One row per model: its evaluation (each JSON names its model; an attack's class pair, an
    honest fine-tune's training settings as hp_* columns), the paper's rule (the
    statistic ``paper_rule``, a margin over the paper's threshold: ``paper_score`` minus
    ``paper_threshold``, flagged when positive) and the calibrated verdict (any of ``verdict``)."""
    rows = []
    for path in metrics:
        ev = read_json(path)
        rows.append(
            {
                "model": ev["model"],
                "epochs_trained": ev["epochs"],
                "accuracy": ev["accuracy"],
                "attack_success": ev["attack_success"],
                "attack_success_test": ev["attack_success_test"],
                # an attack's class pair; an honest fine-tune's training settings (hp_*)
                **{k: ev[k] for k in ("target_class", "attacker_class") if k in ev},
                **{f"hp_{k}": v for k, v in ev.get("hyperparameters", {}).items()},
            }
        )
    det = _with_spec(pd.DataFrame(rows), cell, n_fit_replicates)
    det["epochs"] = det.pop("epochs_trained").astype("Int64")
    rule_det, _ = parse_statistic(paper_rule)
    if rule_det in set(scores["detector"]):
        margin = _statistic(scores, paper_rule)["value"]
        score = _statistic(scores, rule_det)["value"]
        det["paper_score"] = det["model"].map(score)
        det["paper_threshold"] = det["model"].map(score - margin)
        det["paper_flagged"] = det["model"].map(margin > 0)
    flags = [_statistic(scores, v)["calibrated_flagged"] for v in verdict]
    det["verdict_flagged"] = det["model"].map(pd.concat(flags, axis=1).any(axis=1))
    return det


def calibrate(
    scores: list[str],
    states: list[str],
    metrics: list[str],
    autoencoder: str,
    genuine_activations: str,
    data: str,
    scores_out: str,
    detection_out: str,
    bundle_out: str,
    *,
    cell: dict,
    fpr: float,
    verdict: list[str],
    paper_rule: str,
    n_fit_replicates: int | dict[str, int],
    trigger: dict,
) -> None:
    """Calibrate every detector of a cell; write its scores table, its detection table (the
    paper's rule and the calibrated verdict) and the detector bundle that ``audit`` uses."""
    from poisondetect.bundles import write_bundle

    table, thresholds = scores_table(scores, cell=cell, fpr=fpr, n_fit_replicates=n_fit_replicates)
    unknown = [v for v in verdict if ":".join(parse_statistic(v)) not in thresholds]
    if unknown:
        raise PoisonDetectError(
            f"calibration.verdict names {unknown}, which no configured detector computes; "
            f"known: {', '.join(sorted(thresholds))}"
        )
    with atomic_path(scores_out) as tmp:
        table.to_csv(tmp, index=False)
    detection = detection_table(
        metrics,
        table,
        cell=cell,
        n_fit_replicates=n_fit_replicates,
        paper_rule=paper_rule,
        verdict=verdict,
    )
    with atomic_path(detection_out) as tmp:
        detection.to_csv(tmp, index=False)

    arrays, meta = _bundle(states, autoencoder, genuine_activations, data, cell, trigger)
    # where audit finds the trigger set: this path, or the same file relative to the bundle
    meta["trigger_set"]["data_file_from_bundle"] = os.path.relpath(
        data, os.path.dirname(os.path.abspath(bundle_out))
    )
    meta["calibration"] = {
        "fpr": fpr,
        "verdict": verdict,
        "paper_rule": paper_rule,
        "thresholds": thresholds,
        "n_fit_replicates": n_fit_replicates,
    }
    digest = write_bundle(bundle_out, arrays, meta)
    n_h = (table.drop_duplicates("model")["split"] == "fit").sum()
    log.info("calibrated %d detector statistics on %d honest models", len(thresholds), n_h)
    log.info("detector bundle %s, content digest %s", bundle_out, digest)


def _bundle(states, autoencoder, genuine_activations, data, cell, trigger) -> tuple[dict, dict]:
    """The audit bundle's arrays and metadata: the auto-encoder, every detector's fitted state
    (each state file names its detector), the trigger set's description and M's spec."""
    from poisondetect.activations import read_activations
    from poisondetect.bundles import read_bundle
    from poisondetect.data import load_prepared
    from poisondetect.detectors.autoencoder import AUTOENCODER_KIND

    ae_arrays, ae_meta = read_bundle(autoencoder, AUTOENCODER_KIND)
    arrays, detectors = dict(ae_arrays), {}
    for path in states:
        arr, meta = read_bundle(path, STATE_KIND)
        arrays.update(arr)
        detectors[meta["detector"]] = {"params": meta["params"], "fitted": meta["fitted"]}
    ds = load_prepared(data)
    idx, x, y = trigger_set(ds, trigger["max_samples"], cell["seed"])
    meta = {
        "kind": BUNDLE_KIND,
        "autoencoder": {k: v for k, v in ae_meta.items() if k not in ("kind", "digest")},
        "detectors": detectors,
        "trigger_set": {
            "data_file": str(
                data
            ),  # as the workflow names it (audit also tries it beside the bundle)
            "dataset": ds.name,
            "split": "test",
            "max_samples": trigger["max_samples"],
            "seed": cell["seed"],
            "n": len(idx),
            "indices_sha256": sha256_array(idx),
            "images_sha256": sha256_array(x, y),
            "batch_size": trigger["batch_size"],
        },
        "genuine": read_activations(genuine_activations).metadata.get("checkpoint", {}),
        "cell": cell,
    }
    return arrays, meta
