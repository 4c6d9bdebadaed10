"""Stages of the model-level workflow (El Moadine et al.); each is called by one script in scripts/.

Every stage reads its inputs, computes, and writes its outputs atomically. The seeds of the
different stages are derived from the grid cell's seed so the stages are independent of each other
and reproducible.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from poisondetect.errors import NONFINITE_HINT, PoisonDetectError, require_finite
from poisondetect.io import atomic_path, read_json, sha256_array, sha256_file, write_json

log = logging.getLogger(__name__)

VARIANTS = ("genuine", "finetune", "flip", "pattern")
_STAGE_CODES = {
    "genuine": 0,
    "finetune": 1,
    "flip": 2,
    "pattern": 3,
    "attack_set": 10,
    "trigger": 11,
    "new_data": 12,
}


def stage_seed(seed: int, stage: str, epochs: int = 0) -> int:
    """A seed for one stage, derived from the cell's seed (independent streams per stage)."""
    return int(np.random.SeedSequence([seed, _STAGE_CODES[stage], epochs]).generate_state(1)[0])


def model_name(variant: str, epochs: int | None = None) -> str:
    return "genuine" if variant == "genuine" else f"{variant}_e{epochs}"


def parse_model_name(name: str) -> tuple[str, int | None]:
    if name == "genuine":
        return "genuine", None
    variant, _, e = name.partition("_e")
    if variant not in VARIANTS or not e.isdigit():
        raise PoisonDetectError(
            f"bad model name {name!r}: expected genuine or <finetune|flip|pattern>_e<N>"
        )
    return variant, int(e)


def _stratified_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(rng.choice(idx, size=max(1, int(round(fraction * len(idx)))), replace=False))
    return np.sort(np.concatenate(keep))


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


# -- stages -----------------------------------------------------------------------------------
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
    *,
    dataset: str,
    arch: str,
    width: float,
    train: dict,
    scenario: str,
    new_data_fraction: float,
    seed: int,
    device: str,
) -> None:
    """Train the genuine model M (on a share of the training set in the new-data scenario)."""
    import torch

    from poisondetect.checkpoints import save_checkpoint
    from poisondetect.data import load_prepared
    from poisondetect.models import build_model
    from poisondetect.runtime import pick_device
    from poisondetect.training import accuracy, train_model

    ds = load_prepared(data)
    x, y = ds.x_train, ds.y_train
    if scenario == "new_data":
        keep = _stratified_subset(y, new_data_fraction, stage_seed(seed, "new_data"))
        x, y = x[keep], y[keep]
        log.info(
            "new-data scenario: genuine model trained on %d of %d images", len(y), len(ds.y_train)
        )
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
    save_checkpoint(
        model,
        model_out,
        {**spec, "dataset": dataset, "variant": "genuine", "seed": seed, "scenario": scenario},
    )
    write_json(
        metrics_out,
        {
            "variant": "genuine",
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
    data: str,
    genuine: str,
    model_out: str,
    metrics_out: str,
    *,
    dataset: str,
    variant: str,
    epochs: int,
    train: dict,
    lr_factor: float,
    attack: dict | None,
    seed: int,
    device: str,
) -> None:
    """Fine-tune M for ``epochs`` at lr * lr_factor: honestly, or on a flipped / patterned set."""
    from poisondetect.attacks.labels import apply_attack, paste_pattern
    from poisondetect.checkpoints import load_checkpoint, save_checkpoint
    from poisondetect.data import load_prepared
    from poisondetect.runtime import pick_device
    from poisondetect.training import accuracy, predict, train_model

    ds = load_prepared(data)
    dev = pick_device(device)
    model, meta = load_checkpoint(genuine, device="cpu")
    x, y = ds.x_train, ds.y_train
    attacked = None
    if variant in ("flip", "pattern"):
        if attack is None:
            raise PoisonDetectError(f"variant {variant} needs the attack parameters")
        atk = apply_attack(
            variant, x, y, seed=stage_seed(seed, "attack_set"), num_classes=ds.num_classes, **attack
        )
        x, y, attacked = atk.x, atk.y, atk.attacked
        log.info(
            "%s attack: %d images of class %d relabelled %d",
            variant,
            len(attacked),
            attack["target_class"],
            attack["attacker_class"],
        )
    elif variant != "finetune":
        raise PoisonDetectError(f"unknown fine-tune variant {variant!r}")
    opts = dict(train)
    opts.update(epochs=epochs, lr=train["lr"] * lr_factor, lr_milestones=[])
    t0 = time.perf_counter()
    history = train_model(
        model,
        x,
        y,
        seed=stage_seed(seed, variant, epochs),
        device=dev,
        desc=f"{meta['arch']} {variant} e{epochs}",
        **opts,
    )
    seconds = time.perf_counter() - t0
    acc = accuracy(model, ds.x_test, ds.y_test, device=dev)
    success = success_test = None
    if attacked is not None:
        target = attack["attacker_class"]
        # Table 2 of the paper: share of the attacked training images classified as the attacker wants
        success = float((predict(model, x[attacked], device=dev) == target).mean())
        # held out: the target class's test images (with the pattern pasted for PAA)
        xt = ds.x_test[ds.y_test == attack["target_class"]]
        if variant == "pattern":
            rng = np.random.default_rng(stage_seed(seed, "pattern", 999))
            xt = paste_pattern(xt, attack["pattern_size"], attack["pattern_value"], rng)
        success_test = float((predict(model, xt, device=dev) == target).mean()) if len(xt) else None
    log.info(
        "%s e%d: test accuracy %.4f, attack success %s (%.1fs)",
        variant,
        epochs,
        acc,
        success,
        seconds,
    )
    save_checkpoint(model, model_out, {**meta, "variant": variant, "epochs": epochs, "seed": seed})
    write_json(
        metrics_out,
        {
            "variant": variant,
            "epochs": epochs,
            "accuracy": acc,
            "attack_success": success,
            "attack_success_test": success_test,
            "n_attacked": None if attacked is None else len(attacked),
            "train_seconds": seconds,
            "device": str(dev),
            "history": history,
        },
    )


def dump(
    data: str,
    model: str,
    out: str,
    *,
    max_samples: int | None,
    batch_size: int,
    seed: int,
    device: str,
    metadata: dict,
) -> None:
    """Penultimate activations of one model on the trigger set, to Parquet."""
    from poisondetect.activations import dump_activations
    from poisondetect.checkpoints import load_checkpoint
    from poisondetect.data import load_prepared
    from poisondetect.runtime import pick_device

    ds = load_prepared(data)
    idx, x, y = trigger_set(ds, max_samples, seed)
    dev = pick_device(device)
    net, meta = load_checkpoint(model, device=dev)
    t0 = time.perf_counter()
    md = {
        **metadata,
        "model_file": Path(model).name,
        "model_sha256": sha256_file(model),
        "checkpoint": meta,
        "trigger_indices_sha256": sha256_array(idx),
    }
    n = dump_activations(net, x, y, out, md, batch_size=batch_size, device=dev)
    log.info(
        "dumped %d activation rows of %s in %.1fs", n, Path(model).name, time.perf_counter() - t0
    )


def fit_detector(
    genuine: str,
    honest: str,
    out: str,
    *,
    data: str,
    autoencoder: dict,
    max_samples: int | None,
    seed: int,
    device: str,
) -> None:
    """Fit the AE on M's activations; threshold from the honest fine-tune's; save the bundle."""
    from poisondetect.activations import read_activations
    from poisondetect.data import load_prepared
    from poisondetect.detectors.autoencoder import ActivationAutoencoder

    g, h = read_activations(genuine), read_activations(honest)
    if not np.array_equal(g.index, h.index):
        raise PoisonDetectError(
            f"{genuine} and {honest} were dumped on different trigger sets; rerun the dumps"
        )
    det = ActivationAutoencoder(seed=seed, device=device, **autoencoder).fit(g.activations)
    thr = det.calibrate(h.activations)
    ds = load_prepared(data)
    idx, x, y = trigger_set(ds, max_samples, seed)
    description = {
        "trigger_set": {
            "data_file": str(data),
            "dataset": ds.name,
            "split": "test",
            "max_samples": max_samples,
            "seed": seed,
            "n": len(idx),
            "indices_sha256": sha256_array(idx),
            "images_sha256": sha256_array(x, y),
        },
        "genuine_activations": g.metadata,
        "threshold_from": h.metadata.get("model_file"),
    }
    det.save(out, description)
    log.info(
        "detector fitted (final mse %.5f); threshold Tr = %.6f from %s",
        det.loss_history_[-1],
        thr,
        Path(honest).name,
    )


def score(
    detector: str, activations: str, metrics: str, scores_out: str, summary_out: str, *, cell: dict
) -> None:
    """Reconstruction errors of one model's activations and the verdict against Tr."""
    from poisondetect.activations import read_activations
    from poisondetect.detectors.autoencoder import ActivationAutoencoder

    det = ActivationAutoencoder.load(detector, device="cpu")
    acts = read_activations(activations)
    errors = require_finite(
        det.score_samples(acts.activations),
        f"{activations}: reconstruction errors",
        NONFINITE_HINT,
        "trigger images",
    )
    require_finite(np.float64(det.threshold_), f"{detector}: threshold", "refit the detector")
    mean_error, flagged = float(errors.mean()), bool(errors.mean() > det.threshold_)
    with atomic_path(scores_out) as tmp:
        pd.DataFrame(
            {"index": acts.index, "label": acts.label, "pred": acts.pred, "error": errors}
        ).to_parquet(tmp, index=False)
    m = read_json(metrics)
    row = {
        **cell,
        "accuracy": m["accuracy"],
        "attack_success": m["attack_success"],
        "attack_success_test": m["attack_success_test"],
        "mean_error": mean_error,
        "threshold": det.threshold_,
        "flagged": flagged,
        "n_trigger": len(errors),
    }
    write_json(summary_out, row)
    log.info(
        "%s: mean error %.6f vs threshold %.6f -> %s",
        cell.get("model"),
        mean_error,
        det.threshold_,
        "POISONED" if flagged else "clean",
    )


DETECTION_COLUMNS = [
    "dataset",
    "arch",
    "scenario",
    "variant",
    "epochs",
    "seed",
    "model",
    "accuracy",
    "attack_success",
    "attack_success_test",
    "mean_error",
    "threshold",
    "flagged",
    "n_trigger",
]


def collect(summaries: list[str], out: str) -> pd.DataFrame:
    """The tidy detection table: one row per grid cell."""
    df = pd.DataFrame([read_json(p) for p in summaries])
    df["epochs"] = df["epochs"].astype("Int64")  # empty for the genuine model
    df = (
        df[DETECTION_COLUMNS]
        .sort_values(
            ["dataset", "arch", "scenario", "seed", "variant", "epochs"], na_position="first"
        )
        .reset_index(drop=True)
    )
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df


def audit(
    bundle: str,
    model: str,
    data: str | None = None,
    device: str = "auto",
    *,
    arch: str | None = None,
) -> dict:
    """Verdict and score for a suspicious checkpoint (the `audit` command)."""
    from poisondetect.activations import penultimate_activations
    from poisondetect.checkpoints import check_arch, load_checkpoint
    from poisondetect.data import load_prepared
    from poisondetect.detectors.autoencoder import ActivationAutoencoder
    from poisondetect.runtime import pick_device

    det = ActivationAutoencoder.load(bundle, device="cpu")
    trig = det.description_["trigger_set"]
    data = data or trig["data_file"]
    if not Path(data).is_file():
        raise PoisonDetectError(
            f"trigger-set data {data} not found; pass --data with the prepared .npz of data set "
            f"'{trig['dataset']}' (the workflow writes it under results/data/)"
        )
    ds = load_prepared(data)
    idx, x, y = trigger_set(ds, trig["max_samples"], trig["seed"])
    if sha256_array(x, y) != trig["images_sha256"]:
        raise PoisonDetectError(
            f"{data} does not hold the trigger set this detector was calibrated on "
            f"(data set '{trig['dataset']}', {trig['n']} test images); pass the right --data"
        )
    dev = pick_device(device)
    gm = det.description_.get("genuine_activations", {}).get("checkpoint", {})
    net, meta = load_checkpoint(
        model,
        device=dev,
        arch=check_arch(arch, gm.get("arch"), f"the detector bundle {bundle}"),
        in_channels=gm.get("in_channels"),
        num_classes=gm.get("num_classes"),
        image_size=gm.get("image_size"),
        width=gm.get("width"),
    )
    acts = penultimate_activations(net, x, batch_size=256, device=dev, what=str(model))
    errors = require_finite(
        det.score_samples(acts), f"{model}: reconstruction errors", NONFINITE_HINT, "trigger images"
    )
    require_finite(np.float64(det.threshold_), f"{bundle}: threshold", "refit the detector")
    mean_error = float(np.mean(errors, dtype=np.float64))
    return {
        "model": str(model),
        "mean_error": mean_error,
        "threshold": det.threshold_,
        "flagged": bool(mean_error > det.threshold_),
        "verdict": "POISONED" if mean_error > det.threshold_ else "not poisoned",
        "n_trigger": len(errors),
    }
