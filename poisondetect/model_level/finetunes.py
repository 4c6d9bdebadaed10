"""Model stages: train the genuine model M, fine-tune it into the honest and attacked populations.

Each model is evaluated (test accuracy; for attacks, attack success on the attacked training
images and on held-out test images) and its penultimate activations on the cell's trigger set are
dumped to Parquet next to its checkpoint. Result files hold no wall times (those are in the jobs'
``benchmark:`` files), so a rerun on the same machine writes the same bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from poisondetect.errors import PoisonDetectError
from poisondetect.io import sha256_array, sha256_file, write_json
from poisondetect.model_level.cell import genuine_share, stage_seed, trigger_set
from poisondetect.population import (
    MODEL_FILES,
    SAMPLED,
    ModelSpec,
    attack_classes,
    draw_honest,
    model_seed,
    parse_model,
)

log = logging.getLogger(__name__)


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


def _write_metrics(path: str, model: str, history: list[dict], **values) -> None:
    """A model's evaluation JSON: its values and the per-epoch history, without wall times."""
    history = [{k: v for k, v in rec.items() if k != "seconds"} for rec in history]
    write_json(path, {"model": model, **values, "history": history})


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

    from poisondetect.classifiers import accuracy, train_model
    from poisondetect.data import load_prepared
    from poisondetect.models import build_model
    from poisondetect.runtime import pick_device

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
    acc = accuracy(model, ds.x_test, ds.y_test, device=dev)
    log.info(
        "genuine %s on %s: test accuracy %.4f (%.1fs on %s)",
        arch,
        dataset,
        acc,
        time.perf_counter() - t0,
        dev,
    )
    meta = {**spec, "dataset": dataset, "model": "genuine", "seed": seed, "scenario": scenario}
    _save_and_dump(
        model, ds, meta, model_out, activations_out, trigger=trigger, seed=seed, device=dev
    )
    _write_metrics(
        metrics_out,
        "genuine",
        history,
        epochs=train["epochs"],
        accuracy=acc,
        attack_success=None,
        attack_success_test=None,
        n_train=len(y),
        device=str(dev),
    )


def finetune(
    data: str, genuine: str, cell_dir: str, models: list[str], *, device: str, **settings
) -> None:
    """Fine-tune M into ``models`` (of one population), one after the other, writing each one's
    files (``population.MODEL_FILES``) in ``cell_dir``; ``settings`` are those of
    ``_finetune_one`` (train, the honest variant's or the attack's settings, scenario,
    new_data_fraction, trigger, seed)."""
    from poisondetect.data import load_prepared
    from poisondetect.runtime import pick_device

    ds = load_prepared(data)
    dev = pick_device(device)
    for i, model in enumerate(models, 1):
        if len(models) > 1:
            log.info("model %d of %d: %s", i, len(models), model)
        out = {k: str(Path(cell_dir) / rel.format(model=model)) for k, rel in MODEL_FILES.items()}
        _finetune_one(ds, genuine, model, out, device=dev, **settings)


def _honest_set(ds, spec: ModelSpec, honest: dict, *, scenario, new_data_fraction, seed):
    """The images an honest fine-tune trains on (``honest["data"]``: all, seen or unseen)."""
    x, y = ds.x_train, ds.y_train
    seen = genuine_share(y, scenario, new_data_fraction, seed)
    if honest["data"] == "seen":
        return x[seen], y[seen]
    if honest["data"] == "unseen":
        unseen = np.setdiff1d(np.arange(len(y)), seen)
        if not len(unseen):
            raise PoisonDetectError(
                f"{spec.name}: data: unseen, but M saw every training image (scenario {scenario})"
            )
        return x[unseen], y[unseen]
    return x, y


def _success_images(ds, kind, attack: dict, seed: int) -> np.ndarray:
    """The held-out images attack success is measured on: the kind's ``success_images`` (the
    source classes' test images with its trigger; ``kind``: the instance that poisoned the
    training set, which holds a trigger it optimised)."""
    return kind.success_images(
        ds.x_test,
        ds.y_test,
        **{k: v for k, v in attack.items() if k not in ("seed",)},
        seed=seed,
    )


def _held_out_success(net, xt, kind, attack: dict, device) -> float | None:
    """The share of the held-out success images ``xt`` that ``net`` classifies as the attacker
    wants (None without any)."""
    from poisondetect.classifiers import predict

    if not len(xt):
        return None
    return kind.success(predict(net, xt, device=device), attack["attacker_class"])


def honest_hyperparameters(train: dict, honest: dict, spec: ModelSpec, scenario: str, seed: int):
    """The concrete training settings of one honest fine-tune: its named variant's (``optimizer``,
    ``batch_size``, ``weight_decay`` of null: M's), or, for the sampled null (``honest`` holds its
    ranges), the replicate's own draw (``population.draw_honest``)."""
    if spec.variant == SAMPLED:
        hp = draw_honest(honest, spec.name, seed, scenario)
        base = honest["adam_lr"] if hp["optimizer"] == "adam" else train["lr"]
    else:
        hp = {k: honest[k] for k in ("epochs", "lr_factor", "augment", "data")}
        for k in ("optimizer", "batch_size", "weight_decay"):
            hp[k] = train[k] if honest.get(k) is None else honest[k]
        base = train["lr"]
    return {**hp, "lr": base * hp["lr_factor"]}


def _honest_training(ds, spec, honest, train, *, scenario, new_data_fraction, seed):
    """An honest fine-tune's training set, training options and recorded settings."""
    hp = honest_hyperparameters(train, honest, spec, scenario, seed)
    x, y = _honest_set(
        ds, spec, hp, scenario=scenario, new_data_fraction=new_data_fraction, seed=seed
    )
    opts = {
        k: hp[k] for k in ("epochs", "lr", "batch_size", "weight_decay", "optimizer", "augment")
    }
    log.info(
        "honest fine-tune %s: %d images (%s), %d epochs, %s at lr %.3g (x %.3g), batch %d, weight "
        "decay %.2g%s",
        spec.name,
        len(y),
        hp["data"],
        hp["epochs"],
        hp["optimizer"],
        hp["lr"],
        hp["lr_factor"],
        hp["batch_size"],
        hp["weight_decay"],
        ", augmented" if hp["augment"] else "",
    )
    return x, y, None, opts, {"hyperparameters": hp}


def _attack_training(
    ds, spec, kind, attack, train, *, net, scenario, new_data_fraction, seed, device
):
    """An attacked fine-tune's poisoned training set, options and recorded settings (its class
    pair: the configured one, or its own random draw; a shadow attack's is drawn apart from every
    evaluated attack's pair, ``attack["evaluated"]`` naming them). With ``attack["recipe"]`` (the
    sampled honest null's ranges: ``attacks.sampled``) the attacker trains like an honest user:
    its recipe is drawn by the same function as an honest sampled replicate's
    (``honest_hyperparameters``) and recorded as theirs (hp_* columns); else the attack's fixed
    recipe (its epochs from the name, lr x ``attacks.lr_factor``, no augmentation, all data).
    ``kind``: the attack's registry instance (``poisondetect.attacks.registry``)."""
    shadow = spec.replicate < attack.get("shadow_replicates", 0)
    exclude = (
        {attack_classes(attack, n, seed, ds.num_classes) for n in attack["evaluated"]}
        if shadow
        else set()
    )
    target, attacker = attack_classes(
        attack, spec.name, seed, ds.num_classes, shadow=shadow, exclude=exclude
    )
    record = {"target_class": target, "attacker_class": attacker}
    recipe = attack.get("recipe")
    if recipe is not None:
        hp = honest_hyperparameters(train, recipe, _as_sampled(spec), scenario, seed)
        x, y = _honest_set(
            ds, spec, hp, scenario=scenario, new_data_fraction=new_data_fraction, seed=seed
        )
        opts = {
            k: hp[k] for k in ("epochs", "lr", "batch_size", "weight_decay", "optimizer", "augment")
        }
        record["hyperparameters"] = hp
    else:
        x, y = ds.x_train, ds.y_train
        opts = {"epochs": spec.epochs, "lr": train["lr"] * attack["lr_factor"], "augment": False}
    atk = kind.poison(
        x,
        y,
        seed=model_seed(seed, spec.name),
        fraction=spec.fraction,
        num_classes=ds.num_classes,
        target_class=target,
        attacker_class=attacker,
        model=net if kind.needs_model else None,
        device=device,
        **{k: v for k, v in attack.items() if k in kind.settings},
    )
    log.info(
        "%s (%s): %d of %d training images poisoned, class %d -> %d%s",
        spec.name,
        kind.name,
        len(atk.attacked),
        len(y),
        target,
        attacker,
        f", sampled recipe {opts}" if recipe is not None else "",
    )
    return atk.x, atk.y, atk.attacked, opts, record


def _as_sampled(spec: ModelSpec) -> ModelSpec:
    """An attacked model's spec as a replicate of the sampled null (its own name, so its own
    draw): what makes ``honest_hyperparameters`` draw its recipe."""
    return ModelSpec(spec.name, "honest", variant=SAMPLED, replicate=spec.replicate)


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
    """Fine-tune M into one model: an honest one (``honest``: its variant's settings, or the
    sampled null's ranges) or an attacked one (``attack``; the kind, fraction and epochs come from
    the name)."""
    from poisondetect.attacks.registry import get as get_attack
    from poisondetect.checkpoints import load_checkpoint
    from poisondetect.classifiers import accuracy, predict, train_model

    spec = parse_model(model)
    s = model_seed(seed, model)
    net, meta = load_checkpoint(genuine, device="cpu")
    if spec.role == "honest" and honest is not None:
        x, y, attacked, opts, record = _honest_training(
            ds,
            spec,
            honest,
            train,
            scenario=scenario,
            new_data_fraction=new_data_fraction,
            seed=seed,
        )
    elif spec.role == "attack" and attack is not None:
        kind = get_attack(spec.attack)
        x, y, attacked, opts, record = _attack_training(
            ds,
            spec,
            kind,
            attack,
            train,
            net=net,
            scenario=scenario,
            new_data_fraction=new_data_fraction,
            seed=seed,
            device=device,
        )
    else:
        raise PoisonDetectError(
            f"{model}: a fine-tune needs its honest variant's or its attack's settings"
        )
    opts = {**train, "lr_milestones": [], **opts}
    genuine_success = xt = None
    if attacked is not None:
        drawn = {**attack, **record}  # its class pair: configured or its own draw
        xt = _success_images(ds, kind, drawn, s)
        # M's own held-out success with this trigger, before the fine-tune: what the attack adds
        # is the difference (a trigger M already follows is no poisoning by the fine-tune)
        genuine_success = _held_out_success(net, xt, kind, drawn, device)
    t0 = time.perf_counter()
    history = train_model(net, x, y, seed=s, device=device, desc=f"{meta['arch']} {model}", **opts)
    acc = accuracy(net, ds.x_test, ds.y_test, device=device)
    success = success_test = None
    if attacked is not None:
        # Table 2 of the paper: the share of the attacked training images classified as the
        # attacker wants; and the same on the held-out success images
        success = kind.success(predict(net, x[attacked], device=device), drawn["attacker_class"])
        success_test = _held_out_success(net, xt, kind, drawn, device)
    log.info(
        "%s: test accuracy %.4f, attack success %s (held-out %s, M's own %s) (%.1fs)",
        model,
        acc,
        success,
        success_test,
        genuine_success,
        time.perf_counter() - t0,
    )
    meta = {**meta, "model": model, "seed": seed}
    _save_and_dump(
        net, ds, meta, out["model"], out["activations"], trigger=trigger, seed=seed, device=device
    )
    _write_metrics(
        out["metrics"],
        model,
        history,
        epochs=opts["epochs"],
        accuracy=acc,
        attack_success=success,
        attack_success_test=success_test,
        attack_success_genuine=genuine_success,
        n_train=len(y),
        n_attacked=None if attacked is None else len(attacked),
        device=str(device),
        **record,
    )
