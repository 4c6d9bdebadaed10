"""Stages of the model-level workflow (El Moadine et al.); each is called by one script in scripts/.

A cell (dataset x arch x scenario x seed) holds a genuine model M, a population of honest
fine-tunes and a population of attacked fine-tunes (``poisondetect.population``). Each model's job
trains it, evaluates it and dumps its penultimate activations on the trigger set. The auto-encoder
is fitted on M's activations; every configured detector (``poisondetect.detectors.registry``) is
fitted on M (and the honest replicates set aside for fitting) and scores every model; thresholds
are calibrated on those honest replicates at a configured false-alarm rate and checked on the
others. Every stage reads its inputs, computes, and writes its outputs atomically.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from poisondetect.errors import NONFINITE_HINT, PoisonDetectError, require_finite
from poisondetect.io import atomic_path, read_json, sha256_array, sha256_file, write_json
from poisondetect.population import (
    model_seed,
    parse_model,
    split_of,
)
from poisondetect.seeds import derive_seed, stratified_subset

log = logging.getLogger(__name__)

_STAGE_CODES = {"genuine": 0, "trigger": 11, "new_data": 12}
BUNDLE_KIND = "poisondetect.model_level_detector"


def stage_seed(seed: int, stage: str) -> int:
    """A seed for one cell-level stage, derived from the cell's seed."""
    return derive_seed(seed, _STAGE_CODES[stage], 0)


def genuine_share(y: np.ndarray, scenario: str, new_data_fraction: float, seed: int) -> np.ndarray:
    """Indices of the training images M is trained on (all of them in the standard scenario)."""
    if scenario == "new_data":
        return stratified_subset(y, new_data_fraction, stage_seed(seed, "new_data"))
    return np.arange(len(y))


def trigger_set(
    ds, max_samples: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trigger set T_s: the test set, or a seeded subsample of it. Returns (indices, x, y)."""
    n = len(ds.y_test)
    if max_samples is None or max_samples >= n:
        idx = np.arange(n)
    else:
        idx = np.sort(
            np.random.default_rng(stage_seed(seed, "trigger")).choice(n, max_samples, replace=False)
        )
    return idx, ds.x_test[idx], ds.y_test[idx]


def _save_and_dump(
    net, ds, meta: dict, model_out: str, activations_out: str, *, trigger: dict, seed: int, device
) -> None:
    """Save one model's checkpoint and dump its penultimate activations on the cell's trigger set
    to Parquet (the dump records the checkpoint's metadata and hash)."""
    from poisondetect.activations import dump_activations
    from poisondetect.checkpoints import save_checkpoint

    save_checkpoint(net, model_out, meta)
    idx, x, y = trigger_set(ds, trigger["max_samples"], seed)
    t0 = time.perf_counter()
    md = {
        **meta,
        "checkpoint": meta,
        "model_sha256": sha256_file(model_out),
        "trigger_indices_sha256": sha256_array(idx),
    }
    n = dump_activations(
        net, x, y, activations_out, md, batch_size=trigger["batch_size"], device=device
    )
    log.info("dumped %d activation rows in %.1fs", n, time.perf_counter() - t0)


# -- stages: models -----------------------------------------------------------------------------
def prepare(fmt: str, path: str | None, out: str, options: dict) -> None:
    from poisondetect.data import prepare_dataset

    t0 = time.perf_counter()
    ds = prepare_dataset(fmt, path, out, **options)
    log.info(
        "prepared %s (%s): %d train / %d test images of shape %s, %d classes in %.1fs",
        ds.name,
        fmt,
        len(ds.y_train),
        len(ds.y_test),
        ds.x_train.shape[1:],
        len(ds.classes),
        time.perf_counter() - t0,
    )


def train_genuine(
    data: str,
    model_out: str,
    metrics_out: str,
    activations_out: str,
    *,
    dataset: str,
    arch: str,
    width: float,
    train: dict,
    scenario: str,
    new_data_fraction: float,
    trigger: dict,
    seed: int,
    device: str,
) -> None:
    """Train the genuine model M (on a share of the training set in the new-data scenario)."""
    import torch

    from poisondetect.data import load_prepared
    from poisondetect.models import build_model
    from poisondetect.runtime import pick_device
    from poisondetect.training import accuracy, train_model

    ds = load_prepared(data)
    keep = genuine_share(ds.y_train, scenario, new_data_fraction, seed)
    x, y = ds.x_train[keep], ds.y_train[keep]
    if len(keep) < len(ds.y_train):
        log.info("%s scenario: M trained on %d of %d images", scenario, len(y), len(ds.y_train))
    dev = pick_device(device)
    s = stage_seed(seed, "genuine")
    torch.manual_seed(s)
    spec = {
        "arch": arch,
        "in_channels": ds.in_channels,
        "num_classes": ds.num_classes,
        "image_size": ds.image_size,
        "width": width,
    }
    model = build_model(**spec)
    t0 = time.perf_counter()
    history = train_model(model, x, y, seed=s, device=dev, desc=f"{arch} genuine", **train)
    seconds = time.perf_counter() - t0
    acc = accuracy(model, ds.x_test, ds.y_test, device=dev)
    log.info("genuine %s on %s: test accuracy %.4f (%.1fs on %s)", arch, dataset, acc, seconds, dev)
    meta = {**spec, "dataset": dataset, "model": "genuine", "seed": seed, "scenario": scenario}
    _save_and_dump(
        model, ds, meta, model_out, activations_out, trigger=trigger, seed=seed, device=dev
    )
    write_json(
        metrics_out,
        {
            "model": "genuine",
            "epochs": train["epochs"],
            "accuracy": acc,
            "attack_success": None,
            "attack_success_test": None,
            "n_train": len(y),
            "train_seconds": seconds,
            "device": str(dev),
            "history": history,
        },
    )


def finetune(
    data: str, genuine: str, outputs: dict[str, dict[str, str]], *, device: str, **settings
) -> None:
    """Fine-tune M into models of one population, one after the other. ``outputs`` maps each
    model's name to its ``model``, ``metrics`` and ``activations`` paths; ``settings`` are those of
    ``_finetune_one`` (train, the honest variant's or the attack's settings, scenario,
    new_data_fraction, trigger, seed)."""
    from poisondetect.data import load_prepared
    from poisondetect.runtime import pick_device

    ds = load_prepared(data)
    dev = pick_device(device)
    for i, (model, out) in enumerate(outputs.items(), 1):
        if len(outputs) > 1:
            log.info("model %d of %d: %s", i, len(outputs), model)
        _finetune_one(ds, genuine, model, out, device=dev, **settings)


def _finetune_one(
    ds,
    genuine: str,
    model: str,
    out: dict[str, str],
    *,
    train: dict,
    honest: dict | None,
    attack: dict | None,
    scenario: str,
    new_data_fraction: float,
    trigger: dict,
    seed: int,
    device,
) -> None:
    """Fine-tune M into one model: an honest variant (``honest``: epochs, lr_factor, data,
    augment) or an attack (``attack``; the kind, fraction and epochs come from the name)."""
    from poisondetect.attacks.labels import apply_attack, paste_pattern
    from poisondetect.checkpoints import load_checkpoint
    from poisondetect.training import accuracy, predict, train_model

    spec = parse_model(model)
    s = model_seed(seed, model)
    dev = device
    net, meta = load_checkpoint(genuine, device="cpu")
    x, y = ds.x_train, ds.y_train
    attacked = None
    opts = dict(train, lr_milestones=[])
    if spec.role == "honest":
        if honest is None:
            raise PoisonDetectError(f"{model}: an honest fine-tune needs its variant's settings")
        seen = genuine_share(y, scenario, new_data_fraction, seed)
        if honest["data"] == "seen":
            x, y = x[seen], y[seen]
        elif honest["data"] == "unseen":
            unseen = np.setdiff1d(np.arange(len(y)), seen)
            if not len(unseen):
                raise PoisonDetectError(
                    f"{model}: data: unseen, but M saw every training image (scenario {scenario})"
                )
            x, y = x[unseen], y[unseen]
        opts.update(
            epochs=honest["epochs"],
            lr=train["lr"] * honest["lr_factor"],
            augment=honest["augment"],
        )
        log.info(
            "honest fine-tune %s: %d images (%s), %d epochs at lr x %g%s",
            model,
            len(y),
            honest["data"],
            honest["epochs"],
            honest["lr_factor"],
            ", augmented" if honest["augment"] else "",
        )
    elif spec.role == "attack":
        if attack is None:
            raise PoisonDetectError(f"{model}: an attack needs the attack parameters")
        atk = apply_attack(
            spec.variant,
            x,
            y,
            seed=s,
            fraction=spec.fraction,
            num_classes=ds.num_classes,
            **{k: v for k, v in attack.items() if k != "lr_factor"},
        )
        x, y, attacked = atk.x, atk.y, atk.attacked
        opts.update(epochs=spec.epochs, lr=train["lr"] * attack["lr_factor"], augment=False)
        log.info(
            "%s: %d images of class %d relabelled %d",
            model,
            len(attacked),
            attack["target_class"],
            attack["attacker_class"],
        )
    else:
        raise PoisonDetectError(f"{model} is not a fine-tune")
    t0 = time.perf_counter()
    history = train_model(net, x, y, seed=s, device=dev, desc=f"{meta['arch']} {model}", **opts)
    seconds = time.perf_counter() - t0
    acc = accuracy(net, ds.x_test, ds.y_test, device=dev)
    success = success_test = None
    if attacked is not None:
        target = attack["attacker_class"]
        # Table 2 of the paper: share of the attacked training images classified as the attacker wants
        success = float((predict(net, x[attacked], device=dev) == target).mean())
        # held out: the target class's test images (with the pattern pasted for PAA)
        xt = ds.x_test[ds.y_test == attack["target_class"]]
        if spec.variant == "pattern":
            rng = np.random.default_rng(s + 1)
            xt = paste_pattern(xt, attack["pattern_size"], attack["pattern_value"], rng)
        success_test = float((predict(net, xt, device=dev) == target).mean()) if len(xt) else None
    log.info("%s: test accuracy %.4f, attack success %s (%.1fs)", model, acc, success, seconds)
    meta = {**meta, "model": model, "seed": seed}
    _save_and_dump(
        net, ds, meta, out["model"], out["activations"], trigger=trigger, seed=seed, device=dev
    )
    write_json(
        out["metrics"],
        {
            "model": model,
            "epochs": opts["epochs"],
            "accuracy": acc,
            "attack_success": success,
            "attack_success_test": success_test,
            "n_train": len(y),
            "n_attacked": None if attacked is None else len(attacked),
            "train_seconds": seconds,
            "device": str(dev),
            "history": history,
        },
    )


# -- stages: detectors --------------------------------------------------------------------------
def fit_autoencoder(genuine: str, out: str, *, autoencoder: dict, seed: int, device: str) -> None:
    """Fit the auto-encoder on M's activations over the trigger set."""
    from poisondetect.activations import read_activations
    from poisondetect.detectors.autoencoder import ActivationAutoencoder

    g = read_activations(genuine)
    ae = ActivationAutoencoder(seed=seed, device=device, **autoencoder).fit(g.activations)
    ae.save(out)
    log.info(
        "auto-encoder fitted on %d activation rows (final mse %.5f)", len(g), ae.loss_history_[-1]
    )


def ae_errors(autoencoder: str, activations: dict[str, str], out: str) -> None:
    """Per-image reconstruction errors of every model of the cell (long format)."""
    from poisondetect.activations import read_activations
    from poisondetect.detectors.autoencoder import ActivationAutoencoder

    ae = ActivationAutoencoder.load(autoencoder, device="cpu")
    frames = []
    for name, path in activations.items():
        a = read_activations(path)
        e = ae.score_samples(a.activations)
        frames.append(
            pd.DataFrame(
                {"model": name, "index": a.index, "label": a.label, "pred": a.pred, "error": e}
            )
        )
    with atomic_path(out) as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
    log.info("reconstruction errors of %d models", len(frames))


def model_weights(net) -> dict[str, np.ndarray]:
    """A model's parameters and buffers as float arrays (what weight_distance compares)."""
    return {
        k: v.detach().cpu().numpy() for k, v in net.state_dict().items() if v.is_floating_point()
    }


def load_records(
    activations: dict[str, str],
    *,
    needs: tuple[str, ...] = (),
    checkpoints: dict[str, str] | None = None,
    errors: str | None = None,
) -> dict:
    """ModelRecords of a cell's models, with only the fields a detector needs."""
    from poisondetect.activations import read_activations
    from poisondetect.detectors.model_level import ModelRecord

    err = pd.read_parquet(errors) if errors and "errors" in needs else None
    records = {}
    for name, path in activations.items():
        a = read_activations(path)
        rec = ModelRecord(name, a.label, a.pred)
        if "activations" in needs:
            rec.activations = a.activations
        if err is not None:
            e = err[err["model"] == name]
            if not np.array_equal(e["index"].to_numpy(), a.index):
                raise PoisonDetectError(
                    f"{errors}: the errors of {name} do not match its activation dump; rerun ae_errors"
                )
            rec.errors = e["error"].to_numpy()
        if "weights" in needs:
            from poisondetect.checkpoints import load_checkpoint

            net, _ = load_checkpoint(checkpoints[name], device="cpu")
            rec.weights = model_weights(net)
        records[name] = rec
    return records


def fit_and_score(
    name: str, params: dict, records: dict, n_fit_replicates: int
) -> tuple[object, pd.DataFrame]:
    """Fit one detector on M and the honest fitting replicates; score every model.

    A detector that learns from the honest population scores each of its fitting replicates with a
    copy fitted without it (leave one out), so every honest score is out of sample.
    """
    from sklearn.base import clone

    from poisondetect.detectors import registry

    genuine = records["genuine"]
    fit_names = [m for m in records if split_of(parse_model(m), n_fit_replicates) == "fit"]
    det = registry.build("model", name, params)
    det.fit(genuine, [records[m] for m in fit_names])
    names = list(records)
    stats = det.statistics([records[m] for m in names])
    if det.uses_honest:
        for m in fit_names:
            rest = [records[o] for o in fit_names if o != m]
            one = clone(det).fit(genuine, rest).statistics([records[m]])
            for k in stats:
                stats[k][names.index(m)] = one[k][0]
    rows = [
        {"model": m, "statistic": k, "value": float(v[i])}
        for k, v in stats.items()
        for i, m in enumerate(names)
    ]
    df = pd.DataFrame(rows)
    require_finite(df["value"].to_numpy(), f"detector {name}: scores", NONFINITE_HINT, "scores")
    return det, df


def score_detector(
    activations: dict[str, str],
    scores_out: str,
    state_out: str,
    *,
    detector: str,
    params: dict,
    checkpoints: dict[str, str] | None = None,
    errors: str | None = None,
    n_fit_replicates: int,
) -> None:
    """One detector over the whole population of a cell: its scores and its fitted state."""
    from poisondetect.detectors import registry
    from poisondetect.detectors.base import fitted_state

    cls = registry.get("model", detector)
    t0 = time.perf_counter()
    records = load_records(activations, needs=cls.needs, checkpoints=checkpoints, errors=errors)
    det, df = fit_and_score(detector, params, records, n_fit_replicates)
    with atomic_path(scores_out) as tmp:
        df.to_csv(tmp, index=False)
    arrays, plain = fitted_state(det)
    _save_safetensors(
        state_out,
        {f"det.{detector}.{k}": v for k, v in arrays.items()},
        {
            "kind": "poisondetect.model_level_state",
            "detector": detector,
            "params": params,
            "fitted": plain,
        },
    )
    log.info("%s: %d models scored in %.1fs", detector, len(records), time.perf_counter() - t0)


def _save_safetensors(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            str(tmp),
            metadata={"poisondetect": json.dumps(meta)},
        )


# -- calibration --------------------------------------------------------------------------------
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
        g = g.assign(threshold=thr, flagged=g["value"] > thr)
        # rank among the honest fitting replicates (a fitting replicate among the others)
        g["pvalue"] = [
            empirical_pvalue(v, ref.loc[ref["model"] != m, "value"])
            if len(ref) > 1 or m not in set(ref["model"])
            else np.nan
            for m, v in zip(g["model"], g["value"], strict=True)
        ]
        out.append(g)
    return pd.concat(out, ignore_index=True), thresholds


def calibrate(
    scores: dict[str, str],
    states: dict[str, str],
    metrics: dict[str, str],
    autoencoder: str,
    genuine_activations: str,
    data: str,
    population_out: str,
    detection_out: str,
    bundle_out: str,
    *,
    cell: dict,
    calibration: dict,
    n_fit_replicates: int,
    trigger: dict,
) -> None:
    """Calibrate every detector of a cell; write its tidy scores, its paper-style detection rows
    and the detector bundle that ``audit`` uses."""
    from poisondetect.activations import read_activations
    from poisondetect.data import load_prepared
    from poisondetect.detectors.autoencoder import read_bundle

    frames = []
    for det, path in scores.items():
        d = pd.read_csv(path)
        d.insert(1, "detector", det)
        frames.append(d)
    df = pd.concat(frames, ignore_index=True)
    specs = {m: parse_model(m) for m in df["model"].unique()}
    df["split"] = df["model"].map(lambda m: split_of(specs[m], n_fit_replicates))
    df, thresholds = calibrate_scores(df, calibration["fpr"])
    for key in ("role", "variant", "replicate", "fraction", "epochs"):
        df[key] = df["model"].map(lambda m, k=key: getattr(specs[m], k))
    df[["replicate", "epochs"]] = df[["replicate", "epochs"]].astype("Int64")
    for k, v in reversed(list(cell.items())):
        df.insert(0, k, v)
    with atomic_path(population_out) as tmp:
        df.to_csv(tmp, index=False)

    # the paper's table: one row per model, the mean AE error against the paper's Tr
    fitted = {det: read_bundle(p, "poisondetect.model_level_state") for det, p in states.items()}
    rows = []
    for m, path in metrics.items():
        ev = read_json(path)
        s = specs[m]
        row = {
            **cell,
            "model": m,
            "role": s.role,
            "variant": s.variant,
            "replicate": s.replicate,
            "fraction": s.fraction,
            "epochs": ev["epochs"],
            "split": split_of(s, n_fit_replicates),
            "accuracy": ev["accuracy"],
            "attack_success": ev["attack_success"],
            "attack_success_test": ev["attack_success_test"],
        }
        if "ae_mean" in fitted:
            tr = fitted["ae_mean"][1]["fitted"]["paper_threshold_"]
            mean_error = df.loc[
                (df["model"] == m) & (df["detector"] == "ae_mean") & (df["statistic"] == "score"),
                "value",
            ].iloc[0]
            row.update(mean_error=mean_error, threshold=tr, flagged=bool(mean_error > tr))
        rows.append(row)
    detection = pd.DataFrame(rows)
    detection["replicate"] = detection["replicate"].astype("Int64")
    with atomic_path(detection_out) as tmp:
        detection.to_csv(tmp, index=False)

    # the bundle: auto-encoder, every detector's fitted state, the calibration
    ae_arrays, ae_meta = read_bundle(autoencoder, "poisondetect.activation_autoencoder")
    arrays = dict(ae_arrays)
    detectors = {}
    for det, (arr, meta) in fitted.items():
        arrays.update(arr)
        detectors[det] = {"params": meta["params"], "fitted": meta["fitted"]}
    ds = load_prepared(data)
    idx, x, y = trigger_set(ds, trigger["max_samples"], cell["seed"])
    genuine_md = read_activations(genuine_activations).metadata
    meta = {
        "kind": BUNDLE_KIND,
        "autoencoder": ae_meta,
        "detectors": detectors,
        "calibration": {
            "fpr": calibration["fpr"],
            "verdict": calibration["verdict"],
            "thresholds": thresholds,
            "n_fit_replicates": n_fit_replicates,
        },
        "trigger_set": {
            "data_file": str(data),
            "dataset": ds.name,
            "split": "test",
            "max_samples": trigger["max_samples"],
            "seed": cell["seed"],
            "n": len(idx),
            "indices_sha256": sha256_array(idx),
            "images_sha256": sha256_array(x, y),
            "batch_size": trigger["batch_size"],
        },
        "genuine": genuine_md.get("checkpoint", {}),
        "cell": cell,
    }
    _save_safetensors(bundle_out, arrays, meta)
    n_h = (df.drop_duplicates("model")["split"] == "fit").sum()
    log.info("calibrated %d detector statistics on %d honest models", len(thresholds), n_h)


# -- collection: tidy tables and ROC over populations -------------------------------------------
_GROUP = ["dataset", "arch", "scenario"]


def _stat_name(detector: str, statistic: str) -> str:
    return detector if statistic == "score" else f"{detector}:{statistic}"


def roc_table(
    scores: pd.DataFrame, *, fpr: float, bootstrap: int, level: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC summaries of every detector statistic, honest variant (and all of them pooled) and
    attack population, pooled over the seeds of a dataset x arch x scenario.

    Each model's score enters as its margin over its own cell's calibrated threshold (the same
    ordering within a cell; comparable operating points across cells). AUROC and TPR at ``fpr``
    use every honest replicate (all scored out of sample); the calibrated threshold's false-alarm
    rate is measured on the held-out replicates only. Returns (roc rows, ROC curve points of the
    pooled honest population).
    """
    from poisondetect.metrics import auroc, auroc_interval, roc_curve_points, tpr_at_fpr

    df = scores[scores["role"].isin(["honest", "attack"])].copy()
    df["margin"] = df["value"] - df["threshold"]
    df["detector_stat"] = [
        _stat_name(d, s) for d, s in zip(df["detector"], df["statistic"], strict=True)
    ]
    rows, curves = [], []
    for key, g in df.groupby(_GROUP + ["detector_stat"], sort=False):
        honest, attacked = g[g["role"] == "honest"], g[g["role"] == "attack"]
        variants = [("all", honest)] + list(honest.groupby("variant", sort=True))
        for (kind, frac, ep), a in attacked.groupby(["variant", "fraction", "epochs"], sort=True):
            pos = a["margin"].to_numpy()
            for hv, h in variants:
                neg = h["margin"].to_numpy()
                held = h[h["split"] == "heldout"]
                lo, hi = auroc_interval(neg, pos, n_boot=bootstrap, level=level, seed=seed)
                rows.append(
                    dict(
                        zip(_GROUP + ["detector"], key, strict=True),
                        honest_variant=hv,
                        attack=kind,
                        fraction=frac,
                        epochs=int(ep),
                        auroc=auroc(neg, pos),
                        auroc_lo=lo,
                        auroc_hi=hi,
                        fpr=fpr,
                        tpr_at_fpr=tpr_at_fpr(neg, pos, fpr),
                        detection_rate=float((pos > 0).mean()),
                        false_alarm_rate=float((held["margin"] > 0).mean())
                        if len(held)
                        else np.nan,
                        n_honest=len(neg),
                        n_heldout=len(held),
                        n_attacked=len(pos),
                    )
                )
                if hv == "all":
                    f, t = roc_curve_points(neg, pos)
                    curves += [
                        dict(
                            zip(_GROUP + ["detector"], key, strict=True),
                            attack=kind,
                            fraction=frac,
                            epochs=int(ep),
                            fpr=fi,
                            tpr=ti,
                        )
                        for fi, ti in zip(f, t, strict=True)
                    ]
    return pd.DataFrame(rows), pd.DataFrame(curves)


def collect(
    populations: list[str],
    detections: list[str],
    scores_out: str,
    detection_out: str,
    roc_out: str,
    curves_out: str,
    *,
    fpr: float,
    bootstrap: int,
    level: float,
) -> None:
    """The tidy tables of the whole grid: per-model scores, the paper's detection table, ROC."""
    scores = pd.concat([pd.read_csv(p) for p in populations], ignore_index=True)
    det = pd.concat([pd.read_csv(p) for p in detections], ignore_index=True)
    roc, curves = roc_table(scores, fpr=fpr, bootstrap=bootstrap, level=level)
    for df, out in (
        (scores, scores_out),
        (det, detection_out),
        (roc, roc_out),
        (curves, curves_out),
    ):
        with atomic_path(out) as tmp:
            df.to_csv(tmp, index=False)
    log.info(
        "%d models, %d detector statistics, %d ROC rows",
        len(det),
        scores[["detector", "statistic"]].drop_duplicates().shape[0],
        len(roc),
    )
    for line in summary_lines(roc, det):
        log.info("%s", line)


def summary_lines(roc: pd.DataFrame, detection: pd.DataFrame) -> list[str]:
    """The conclusions of a run, per attack population: the best detector against all honest
    fine-tunes (AUROC and its interval, the calibrated threshold's detection and measured
    false-alarm rates) and the paper's rule (attacked and honest models flagged)."""
    lines = []
    r = roc[(roc["honest_variant"] == "all") & ~roc["detector"].str.contains(":")]
    for key, g in r.groupby(_GROUP + ["attack", "fraction", "epochs"], sort=True):
        best = g.sort_values(["auroc", "tpr_at_fpr"], ascending=False).iloc[0]
        d = detection[
            (detection[_GROUP] == pd.Series(dict(zip(_GROUP, key[:3], strict=True)))).all(axis=1)
        ]
        att = d[(d["variant"] == key[3]) & (d["fraction"] == key[4]) & (d["epochs"] == key[5])]
        hon = d[d["role"] == "honest"]
        paper = (
            f"; paper's rule flags {int(att['flagged'].sum())}/{len(att)} of them and "
            f"{int(hon['flagged'].sum())}/{len(hon)} honest"
            if "flagged" in d
            else ""
        )
        lines.append(
            f"{'/'.join(key[:3])} {key[3]} {key[4] * 100:g}% e{key[5]}: best {best['detector']} "
            f"AUROC {best['auroc']:.2f} [{best['auroc_lo']:.2f}, {best['auroc_hi']:.2f}], "
            f"detects {best['detection_rate']:.2f} at a measured false-alarm rate "
            f"{best['false_alarm_rate']:.2f} ({int(best['n_attacked'])} attacked, "
            f"{int(best['n_honest'])} honest){paper}"
        )
    return lines


# -- audit --------------------------------------------------------------------------------------
def audit(
    bundle: str,
    model: str,
    data: str | None = None,
    device: str = "auto",
    *,
    arch: str | None = None,
) -> dict:
    """Every detector's score, threshold and empirical p-value for a suspicious checkpoint, and
    the verdict of the configured verdict detectors (the `audit` command)."""
    from poisondetect.activations import iter_penultimate
    from poisondetect.checkpoints import check_arch, load_checkpoint
    from poisondetect.data import load_prepared
    from poisondetect.detectors import registry
    from poisondetect.detectors.autoencoder import ActivationAutoencoder, read_bundle
    from poisondetect.detectors.base import restore_fitted
    from poisondetect.detectors.model_level import ModelRecord
    from poisondetect.metrics import empirical_pvalue
    from poisondetect.runtime import pick_device

    arrays, meta = read_bundle(bundle, BUNDLE_KIND)
    trig, gm = meta["trigger_set"], meta["genuine"]
    arch = check_arch(arch, gm.get("arch"), f"the detector bundle {bundle}")
    data = data or trig["data_file"]
    if not Path(data).is_file():
        raise PoisonDetectError(
            f"trigger-set data {data} not found; pass --data with the prepared .npz of data set "
            f"'{trig['dataset']}' (the workflow writes it under results/data/)"
        )
    ds = load_prepared(data)
    _idx, x, y = trigger_set(ds, trig["max_samples"], trig["seed"])
    if sha256_array(x, y) != trig["images_sha256"]:
        raise PoisonDetectError(
            f"{data} does not hold the trigger set this detector was calibrated on "
            f"(data set '{trig['dataset']}', {trig['n']} test images); pass the right --data"
        )
    dev = pick_device(device)
    net, _ = load_checkpoint(
        model,
        device=dev,
        arch=arch,
        in_channels=gm.get("in_channels"),
        num_classes=gm.get("num_classes"),
        image_size=gm.get("image_size"),
        width=gm.get("width"),
    )
    acts, preds = [], []
    for _start, a, logits in iter_penultimate(net, x, batch_size=trig["batch_size"], device=dev):
        acts.append(a)
        preds.append(logits.argmax(1))
    acts = require_finite(
        np.concatenate(acts), f"{model}: penultimate activations", NONFINITE_HINT, "trigger images"
    )
    ae = ActivationAutoencoder.from_tensors(arrays, meta["autoencoder"], device="cpu")
    errors = require_finite(
        ae.score_samples(acts), f"{model}: reconstruction errors", NONFINITE_HINT, "trigger images"
    )
    record = ModelRecord(
        Path(model).name,
        y,
        np.concatenate(preds),
        activations=acts,
        errors=errors,
        weights=model_weights(net),
    )
    cal = meta["calibration"]
    results = []
    for name, spec in meta["detectors"].items():
        det = registry.build("model", name, spec["params"])
        prefix = f"det.{name}."
        restore_fitted(
            det,
            {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)},
            spec["fitted"],
        )
        for stat, value in det.statistics([record]).items():
            require_finite(value, f"{model}: the {_stat_name(name, stat)} score", NONFINITE_HINT)
            c = cal["thresholds"][f"{name}:{stat}"]
            results.append(
                {
                    "detector": _stat_name(name, stat),
                    "score": float(value[0]),
                    "threshold": c["threshold"],
                    "pvalue": empirical_pvalue(float(value[0]), c["honest_scores"]),
                    "flagged": bool(value[0] > c["threshold"]),
                }
            )
    by_name = {r["detector"]: r for r in results}
    verdict_from = [v.replace(":score", "") for v in cal["verdict"]]
    flagged_by = [v for v in verdict_from if by_name[v]["flagged"]]
    out = {
        "model": str(model),
        "verdict": "POISONED" if flagged_by else "not poisoned",
        "flagged": bool(flagged_by),
        "verdict_from": verdict_from,
        "flagged_by": flagged_by,
        "fpr": cal["fpr"],
        "n_trigger": len(y),
        "detectors": results,
    }
    if "ae_mean" in meta["detectors"]:
        tr = meta["detectors"]["ae_mean"]["fitted"]["paper_threshold_"]
        err = by_name["ae_mean"]["score"]
        out["paper"] = {"mean_error": err, "threshold": tr, "flagged": bool(err > tr)}
    return out
