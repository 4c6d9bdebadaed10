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
    scores it came from (what the audit bundle stores), in the order of the fitting replicates'
    names (``honest_models``)."""
    from poisondetect.metrics import calibrated_threshold, empirical_pvalue

    out, thresholds = [], {}
    for (det, stat), g in df.groupby(["detector", "statistic"], sort=False):
        ref = g[g["split"] == "fit"].sort_values("model", kind="stable")
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


VERDICT = "verdict"  # the verdict's rows in the scores table: detector "verdict", statistic "score"


def verdict_scores(
    df: pd.DataFrame, verdict: list[str], fpr: float, combine: str = "smallest_p"
) -> pd.DataFrame:
    """The calibrated verdict of every model as rows of the scores table (detector ``verdict``):
    one statistic over the verdict's statistics (``metrics.verdict_pvalue``, which ``combine``
    makes: the smallest per-statistic p-value, or Fisher's sum, calibrated as one), its p-value
    against the honest fitting replicates (a fitting replicate against the others: out of
    sample), ``value`` = -log10(p-value),
    flagged when the p-value is at most ``metrics.verdict_cutoff`` of the replicates it was
    calibrated on, and the false-alarm rate those replicates guarantee (``guaranteed_fpr``)."""
    from poisondetect.metrics import guaranteed_fpr, verdict_cutoff, verdict_pvalue

    keys = [parse_statistic(v) for v in verdict]
    wide = {}
    for det, stat in keys:
        rows = df[(df["detector"] == det) & (df["statistic"] == stat)]
        wide[f"{det}:{stat}"] = rows.set_index("model")["value"]
    wide = pd.DataFrame(wide)
    if wide.isna().any().any():
        missing = wide.columns[wide.isna().any()].tolist()
        raise PoisonDetectError(
            f"calibration.verdict: {missing} did not score every model (a detector scored by an "
            "earlier release lacks a statistic added since: rerun its scoring, e.g. "
            "`snakemake --forcerun score_detector`)"
        )
    split = df.drop_duplicates("model").set_index("model")["split"].reindex(wide.index)
    fit = sorted(split.index[split == "fit"])
    rows = []
    for model, scores in wide.iterrows():
        ref = [m for m in fit if m != model]
        p = verdict_pvalue(scores.to_numpy(), wide.loc[ref].to_numpy(), combine)
        cut = verdict_cutoff(len(ref), fpr)
        rows.append(
            {
                "model": model,
                "split": split[model],
                "detector": VERDICT,
                "statistic": "score",
                "value": -np.log10(p),
                # between the flagged p-value and the next one up: value > threshold = flagged
                "calibrated_threshold": -np.log10(cut + 0.5 / (len(ref) + 1)),
                "calibrated_flagged": bool(p <= cut + 1e-12),
                "pvalue": p,
                "guaranteed_fpr": guaranteed_fpr(len(ref), fpr) if ref else 1.0,
                "n_calibration": len(ref),
            }
        )
    return pd.DataFrame(rows)


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
    score_files: list[str],
    *,
    cell: dict,
    fpr: float,
    n_fit_replicates: int | dict[str, int],
    verdict: list[str] = (),
    combine: str = "smallest_p",
) -> tuple[pd.DataFrame, dict]:
    """The calibrated scores of every detector of a cell (each file names its detector), and the
    verdict's rows when ``verdict`` names its statistics (made one by ``combine``)."""
    df = pd.concat([pd.read_csv(p) for p in score_files], ignore_index=True)
    specs = {m: parse_model(m) for m in df["model"].unique()}
    df["split"] = df["model"].map(lambda m: split_of(specs[m], n_fit_replicates))
    df, thresholds = calibrate_scores(df, fpr)
    if verdict:
        check_verdict(verdict, thresholds)
        df = pd.concat([df, verdict_scores(df, list(verdict), fpr, combine)], ignore_index=True)
    return _with_spec(df, cell, n_fit_replicates), thresholds


def check_verdict(verdict: list[str], thresholds: dict) -> None:
    """Every statistic the verdict names was calibrated."""
    unknown = [v for v in verdict if ":".join(parse_statistic(v)) not in thresholds]
    if unknown:
        raise PoisonDetectError(
            f"calibration.verdict names {unknown}, which no configured detector computes; "
            f"known: {', '.join(sorted(thresholds))}"
        )


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
    fpr: float,
) -> pd.DataFrame:
    """One row per model: its evaluation (each JSON names its model; an attack's class pair, an
    honest fine-tune's training settings as hp_* columns), the paper's rule (the
    statistic ``paper_rule``, a margin over the paper's threshold: ``paper_score`` minus
    ``paper_threshold``, flagged when positive) and the calibrated verdict (the scores table's
    ``verdict`` rows: flag, p-value, the false-alarm rate its calibration guarantees and whether
    that is the configured ``fpr``)."""
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
                # M's own held-out success with the same trigger (none before this release)
                "attack_success_genuine": ev.get("attack_success_genuine"),
                # an attack's class pair; an honest fine-tune's training settings (hp_*)
                **{k: ev[k] for k in ("target_class", "attacker_class") if k in ev},
                **{f"hp_{k}": v for k, v in ev.get("hyperparameters", {}).items()},
            }
        )
    det = _with_spec(pd.DataFrame(rows), cell, n_fit_replicates)
    det["attack_success_genuine"] = det["attack_success_genuine"].astype(float)
    det["attack_success_gain"] = success_gain(det)
    older = det["attack_success_test"].notna() & det["attack_success_genuine"].isna()
    if older.any():
        log.warning(
            "%d attacked fine-tunes (e.g. %s) were made by an earlier release, which did not "
            "record M's own success with their trigger: they are judged effective on held-out "
            "success alone. Rerun them (snakemake --forcerun finetune_attack) to judge them on "
            "the success the fine-tune added",
            int(older.sum()),
            det.loc[older, "model"].iloc[0],
        )
    det["epochs"] = det.pop("epochs_trained").astype("Int64")
    rule_det, _ = parse_statistic(paper_rule)
    if rule_det in set(scores["detector"]):
        margin = _statistic(scores, paper_rule)["value"]
        score = _statistic(scores, rule_det)["value"]
        det["paper_score"] = det["model"].map(score)
        det["paper_threshold"] = det["model"].map(score - margin)
        det["paper_flagged"] = det["model"].map(margin > 0)
    v = _statistic(scores, VERDICT)
    det["verdict_flagged"] = det["model"].map(v["calibrated_flagged"]).astype(bool)
    det["verdict_pvalue"] = det["model"].map(v["pvalue"])
    det["verdict_guaranteed_fpr"] = det["model"].map(v["guaranteed_fpr"])
    # the configured rate is out of reach with this many honest fitting replicates
    det["verdict_fpr_reachable"] = det["verdict_guaranteed_fpr"] <= fpr + 1e-12
    return det


def success_gain(detection: pd.DataFrame) -> pd.Series:
    """The held-out attack success a fine-tune added: its held-out success minus M's own with
    the same trigger (a trigger M already follows, as an adversarial patch against M does, is no
    poisoning by the fine-tune). Fine-tunes that do not record M's own success (made by an
    earlier release) keep their held-out success; honest and genuine models have none."""
    base = detection.get("attack_success_genuine")
    base = 0.0 if base is None else base.astype(float).fillna(0.0)
    return detection["attack_success_test"].astype(float) - base


def effective(detection: pd.DataFrame, min_success: float) -> pd.Series:
    """Which models are effective attacks: the held-out success their fine-tune added
    (``success_gain``) is at least ``min_success``."""
    return success_gain(detection) >= min_success


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
    combine: str = "smallest_p",
    paper_rule: str,
    n_fit_replicates: int | dict[str, int],
    trigger: dict,
) -> None:
    """Calibrate every detector of a cell; write its scores table, its detection table (the
    paper's rule and the calibrated verdict) and the detector bundle that ``audit`` uses."""
    from poisondetect.bundles import write_bundle
    from poisondetect.metrics import guaranteed_fpr, replicates_needed

    table, thresholds = scores_table(
        scores,
        cell=cell,
        fpr=fpr,
        n_fit_replicates=n_fit_replicates,
        verdict=verdict,
        combine=combine,
    )
    with atomic_path(scores_out) as tmp:
        table.to_csv(tmp, index=False)
    detection = detection_table(
        metrics,
        table,
        cell=cell,
        n_fit_replicates=n_fit_replicates,
        paper_rule=paper_rule,
        fpr=fpr,
    )
    with atomic_path(detection_out) as tmp:
        detection.to_csv(tmp, index=False)

    honest_models = sorted(table.loc[table["split"] == "fit", "model"].unique())
    arrays, meta = _bundle(states, autoencoder, genuine_activations, data, cell, trigger)
    # where audit finds the trigger set: this path, or the same file relative to the bundle
    meta["trigger_set"]["data_file_from_bundle"] = os.path.relpath(
        data, os.path.dirname(os.path.abspath(bundle_out))
    )
    meta["calibration"] = {
        "fpr": fpr,
        "verdict": verdict,
        "combine": combine,
        "paper_rule": paper_rule,
        "thresholds": thresholds,
        # the honest fitting replicates, in the order of every statistic's honest_scores
        "honest_models": honest_models,
        "n_fit_replicates": n_fit_replicates,
    }
    digest = write_bundle(bundle_out, arrays, meta)
    n_h = len(honest_models)
    log.info("calibrated %d detector statistics on %d honest models", len(thresholds), n_h)
    rate = guaranteed_fpr(n_h, fpr)
    if rate > fpr + 1e-12:
        log.warning(
            "the verdict's false-alarm rate: %d honest fitting replicates guarantee %.3f, not the "
            "configured %g; %d are needed (more sampled honest fine-tunes: "
            "model_level.finetune.sampled.replicates)",
            n_h,
            rate,
            fpr,
            # the smallest p-value: enough for a model beyond every honest one on one statistic
            replicates_needed(fpr, len(verdict) if combine == "smallest_p" else 1),
        )
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
