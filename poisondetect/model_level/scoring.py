"""Scoring stages: the auto-encoder on M's activations, its per-image errors for every model, and
each configured detector fitted on M (and the honest fitting replicates) and scored over the cell.

Every per-model file says which model it belongs to (the activation dumps and checkpoints in their
metadata, the errors in their ``model`` column), so the stages key models by what the files say,
never by file names or positions.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from poisondetect.errors import NONFINITE_HINT, PoisonDetectError, require_finite
from poisondetect.io import atomic_path
from poisondetect.model_level.cell import STATE_KIND
from poisondetect.population import parse_model, split_of

log = logging.getLogger(__name__)


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


def read_dumps(paths: list[str]) -> dict:
    """The activation dumps of a cell keyed by the model each says it holds (its metadata)."""
    from poisondetect.activations import read_activations

    dumps = {}
    for path in paths:
        a = read_activations(path)
        name = a.metadata.get("model")
        if name is None or name in dumps:
            raise PoisonDetectError(
                f"{path}: its metadata names {'no model' if name is None else 'model ' + repr(name)}"
                f"{'' if name is None else ', already read from another dump'}; rerun its fine-tune"
            )
        dumps[name] = a
    return dumps


def ae_errors(autoencoder: str, activations: list[str], out: str) -> None:
    """Per-image reconstruction errors of every model of the cell (long format)."""
    from poisondetect.detectors.autoencoder import ActivationAutoencoder

    ae = ActivationAutoencoder.load(autoencoder, device="cpu")
    frames = []
    for name, a in read_dumps(activations).items():
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


def _networks(checkpoints: list[str]) -> dict:
    """The networks of a cell keyed by the model each checkpoint says it holds."""
    from poisondetect.checkpoints import load_checkpoint

    nets = {}
    for path in checkpoints:
        net, meta = load_checkpoint(path, device="cpu")
        nets[meta.get("model", path)] = net
    return nets


def read_statistics(score_files: list[str]) -> dict[str, dict[str, float]]:
    """Every model's statistics in the other detectors' score tables (each names its detector):
    model -> {"detector" or "detector:statistic": value}."""
    from poisondetect.detectors.base import statistic_name

    out: dict[str, dict[str, float]] = {}
    for path in score_files:
        df = pd.read_csv(path)
        for m, d, st, v in zip(
            df["model"], df["detector"], df["statistic"], df["value"], strict=True
        ):
            out.setdefault(m, {})[statistic_name(d, st)] = float(v)
    return out


class _NetworkLoader:
    """Loads one checkpoint's network when called; ``digest`` is the checkpoint's content
    digest (what a kept score of the network depends on)."""

    def __init__(self, path: str, digest: str) -> None:
        self.path, self.digest = path, digest

    def __call__(self):
        from poisondetect.checkpoints import load_checkpoint

        return load_checkpoint(self.path, device="cpu")[0]


def _network_loaders(checkpoints: list[str]) -> dict:
    """A loader of each checkpoint's network, keyed by the model its metadata names."""
    from poisondetect.bundles import read_metadata

    out = {}
    for path in checkpoints:
        meta = read_metadata(path)
        out[meta.get("model", path)] = _NetworkLoader(path, str(meta.get("digest", "")))
    return out


def record_digest(rec, fields) -> str:
    """A digest of what a detector reads of one model (its ``needs``, labels and predictions)."""
    import hashlib
    import json

    from poisondetect.io import sha256_array

    parts = {"labels": sha256_array(rec.labels), "preds": sha256_array(rec.preds)}
    for field in fields:
        value = getattr(rec, field)
        if field == "network":
            digest = getattr(value, "digest", "")
            if not digest:  # a module, or a checkpoint without a digest: its weights
                net = rec.need("network")
                digest = sha256_array(
                    *(t.detach().cpu().numpy() for t in net.state_dict().values())
                )
            parts[field] = digest
        elif isinstance(value, dict):
            parts[field] = {k: sha256_array(np.asarray(v)) for k, v in sorted(value.items())}
        elif value is not None:
            parts[field] = sha256_array(np.asarray(value))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@functools.cache
def detectors_code_digest() -> str:
    """A digest of the detectors' source (every file of ``poisondetect/detectors``): kept
    statistics computed by other code (a statistic added or changed) are not reused. Trigger
    inversion's kept inversions are keyed by the optimisation's parameters instead, so its
    statistics are recomputed from them in a fraction of a second per model."""
    import hashlib

    from poisondetect import detectors

    h = hashlib.sha256()
    for path in sorted(Path(detectors.__path__[0]).rglob("*.py")):
        h.update(path.relative_to(detectors.__path__[0]).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _kept_statistics(det, name: str, records: dict, names: list[str], cache: str) -> dict:
    """``det.statistics`` of the models ``names``, each model's kept in ``cache`` under a key of
    everything it depends on (the detector's parameters, fitted state and code, what it reads
    of the model): a model whose key is there is not scored again."""
    from poisondetect.bundles import content_digest
    from poisondetect.detectors.base import fitted_state
    from poisondetect.detectors.model_level import Progress
    from poisondetect.io import kept_json

    arrays, plain = fitted_state(det)
    base = {
        "detector": name,
        "params": {k: v for k, v in det.get_params().items() if k != "device"},
        "state": content_digest(arrays, plain),
        "code": detectors_code_digest(),
    }
    out: dict[str, list[float]] = {}
    hits = 0
    progress = Progress(name, len(names))
    for i, m in enumerate(names, 1):
        rec = records[m]
        stats, kept = kept_json(
            os.path.join(cache, f"{m}.json"),
            {**base, "model": record_digest(rec, det.needs)},
            lambda rec=rec: {k: float(v[0]) for k, v in det.statistics([rec]).items()},
        )
        hits += kept
        for k, v in stats.items():
            out.setdefault(k, []).append(v)
        progress.step(i, f"; {hits} kept from an earlier run")
    log.info("%s: %d of %d models' statistics kept from an earlier run", name, hits, len(names))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def trigger_images(data: str, trigger: dict, seed: int, activations: list[str]) -> np.ndarray:
    """The cell's trigger images (the rows the dumps index), checked against the dumps' labels."""
    from poisondetect.activations import read_activations
    from poisondetect.data import load_prepared
    from poisondetect.model_level.cell import trigger_set

    _idx, x, y = trigger_set(load_prepared(data), trigger["max_samples"], seed)
    dump = read_activations(activations[0])
    if not np.array_equal(y[dump.index], dump.label):
        raise PoisonDetectError(
            f"{data}: its trigger set is not the one the activation dumps were made on; rerun "
            "prepare_data and what follows"
        )
    return x


def load_records(
    activations: list[str],
    *,
    needs: tuple[str, ...] = (),
    checkpoints: list[str] | None = None,
    errors: str | None = None,
    statistics: list[str] | None = None,
    images: np.ndarray | None = None,
) -> dict:
    """ModelRecords of a cell's models, with only the fields a detector needs (``images``: the
    trigger set's images, in the dumps' row order, for the detectors that need them; networks as
    loaders, loaded when a detector needs one)."""
    from poisondetect.detectors.model_level import ModelRecord

    err = pd.read_parquet(errors) if errors and "errors" in needs else None
    nets = _networks(checkpoints or []) if "weights" in needs else {}
    loaders = _network_loaders(checkpoints or []) if "network" in needs else {}
    stats = read_statistics(statistics or []) if "statistics" in needs else {}
    records = {}
    for name, a in read_dumps(activations).items():
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
            if name not in nets:
                raise PoisonDetectError(f"no checkpoint of model {name!r} among the inputs")
            rec.weights = model_weights(nets[name])
        if "statistics" in needs:
            rec.statistics = stats.get(name, {})
        if "network" in needs:
            if name not in loaders:
                raise PoisonDetectError(f"no checkpoint of model {name!r} among the inputs")
            rec.network = loaders[name]
        if "images" in needs:
            rec.images = images[a.index]
        records[name] = rec
    return records


def fit_and_score(
    name: str,
    params: dict,
    records: dict,
    n_fit_replicates: int | dict[str, int],
    reference: str | None = None,
    run: dict | None = None,
    cache: str | None = None,
) -> tuple[object, pd.DataFrame]:
    """Fit one detector on M and the honest fitting replicates (and, where it uses them, the
    reference honest fine-tune ``reference`` and the shadow attacks); score every model.

    A detector that learns from the honest population scores each of its fitting replicates with a
    copy fitted without it (leave one out), so every honest score is out of sample. No detector
    ever sees a held-out honest model or an evaluated attack while it is fitted.

    A ``costly`` detector keeps each model's statistics in ``cache`` (a folder): a rerun after
    the attacks changed scores only the new models.
    """
    from sklearn.base import clone

    from poisondetect.detectors import registry

    genuine = records["genuine"]
    split = {m: split_of(parse_model(m), n_fit_replicates) for m in records}
    fit_names = [m for m in records if split[m] == "fit"]
    det = registry.build("model", name, params, **(run or {}))  # seed, device where it takes them
    context = {}
    if det.uses_reference and reference is not None:
        if reference not in records:
            raise PoisonDetectError(
                f"detector {name}: the reference fine-tune {reference!r} is not in the cell"
            )
        context["reference"] = records[reference]
    if det.uses_shadow:
        context["shadow"] = [records[m] for m in records if split[m] == "shadow"]
    if cache and hasattr(det, "keep_searches"):  # the per-model searches (seconds each)
        det.keep_searches(cache, lambda r: record_digest(r, det.needs))
    det.fit(genuine, [records[m] for m in fit_names], **context)
    names = list(records)
    if cache and det.costly:
        stats = _kept_statistics(det, name, records, names, cache)
    else:
        stats = det.statistics([records[m] for m in names])
    if det.uses_honest:
        for m in fit_names:
            rest = [records[o] for o in fit_names if o != m]
            one = clone(det).fit(genuine, rest, **context).statistics([records[m]])
            for k in stats:
                stats[k][names.index(m)] = one[k][0]
    rows = [
        {"model": m, "detector": name, "statistic": k, "value": float(v[i])}
        for k, v in stats.items()
        for i, m in enumerate(names)
    ]
    df = pd.DataFrame(rows)
    require_finite(df["value"].to_numpy(), f"detector {name}: scores", NONFINITE_HINT, "scores")
    return det, df


def score_detector(
    activations: list[str],
    scores_out: str,
    state_out: str,
    *,
    detector: str,
    params: dict,
    checkpoints: list[str] | None = None,
    errors: str | None = None,
    statistics: list[str] | None = None,
    n_fit_replicates: int | dict[str, int],
    reference: str | None = None,
    data: str | None = None,
    trigger: dict | None = None,
    seed: int = 0,
    device: str | None = None,
) -> None:
    """One detector over the whole population of a cell: its scores (a table that names the
    detector) and its fitted state (a bundle that names it too)."""
    from poisondetect.bundles import write_bundle
    from poisondetect.detectors import registry
    from poisondetect.detectors.base import fitted_state

    cls = registry.get("model", detector)
    t0 = time.perf_counter()
    images = trigger_images(data, trigger, seed, activations) if "images" in cls.needs else None
    records = load_records(
        activations,
        needs=cls.needs,
        checkpoints=checkpoints,
        errors=errors,
        statistics=statistics,
        images=images,
    )
    run = {"seed": seed, **({"device": device} if device else {})}
    # kept statistics of costly detectors: the cell's cache/<detector>/ (delete it to rescore)
    cache = os.path.join(os.path.dirname(os.path.dirname(scores_out)), "cache", detector)
    det, df = fit_and_score(
        detector, params, records, n_fit_replicates, reference, run=run, cache=cache
    )
    with atomic_path(scores_out) as tmp:
        df.to_csv(tmp, index=False)
    arrays, plain = fitted_state(det)
    # its full parameters (the run's seed included; not the device: audit picks its own)
    full = {k: v for k, v in det.get_params().items() if k != "device"}
    write_bundle(
        state_out,
        {f"det.{detector}.{k}": v for k, v in arrays.items()},
        {"kind": STATE_KIND, "detector": detector, "params": full, "fitted": plain},
    )
    log.info("%s: %d models scored in %.1fs", detector, len(records), time.perf_counter() - t0)
