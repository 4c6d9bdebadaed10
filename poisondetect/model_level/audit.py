"""The ``audit`` command: one suspicious checkpoint against a detector bundle.

The bundle is verified before it is believed: its content digest (``poisondetect.bundles``), every
threshold and honest score finite, every fitted array finite, a non-empty verdict naming
statistics the bundle calibrated. The trigger set is re-read and checked against the hashes in the
bundle; the checkpoint is read as weights only; every activation, error and score must be finite.
Any failure is bad input (``PoisonDetectError``), never a verdict.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from poisondetect.detectors.base import parse_statistic, statistic_name
from poisondetect.errors import NONFINITE_HINT, PoisonDetectError, require_finite
from poisondetect.io import sha256_array
from poisondetect.model_level.cell import BUNDLE_KIND, trigger_set

_BUNDLE_KEYS = ("autoencoder", "detectors", "trigger_set", "genuine", "calibration")
_TRIGGER_KEYS = ("data_file", "dataset", "max_samples", "seed", "n", "images_sha256", "batch_size")


def _bad_bundle(bundle: str, problem: str) -> PoisonDetectError:
    return PoisonDetectError(
        f"{bundle}: {problem}; the detector bundle is damaged or was altered: rebuild it with the "
        "workflow (snakemake --forcerun calibrate) or get an intact copy"
    )


def verify_bundle(bundle: str) -> tuple[dict, dict]:
    """The bundle's arrays and metadata, once its digest, calibration and fitted arrays check."""
    from poisondetect.bundles import read_bundle

    arrays, meta = read_bundle(bundle, BUNDLE_KIND, require_digest=True)
    missing = [k for k in _BUNDLE_KEYS if not isinstance(meta.get(k), dict)]
    missing += [f"trigger_set.{k}" for k in _TRIGGER_KEYS if k not in meta.get("trigger_set", {})]
    if missing:
        raise _bad_bundle(bundle, f"its metadata lacks {', '.join(missing)}")
    cal = meta.get("calibration") or {}
    thresholds = cal.get("thresholds") or {}
    if not thresholds:
        raise _bad_bundle(bundle, "it holds no calibrated threshold")
    for name, c in thresholds.items():
        values = [c.get("threshold"), *(c.get("honest_scores") or [])]
        if not c.get("honest_scores") or not all(
            isinstance(v, int | float) and math.isfinite(v) for v in values
        ):
            raise _bad_bundle(bundle, f"the threshold or honest scores of {name} are not finite")
    verdict = cal.get("verdict") or []
    if not verdict:
        raise _bad_bundle(bundle, "its verdict names no detector")
    missing = [v for v in verdict if ":".join(parse_statistic(v)) not in thresholds]
    if missing:
        raise _bad_bundle(bundle, f"its verdict names {missing}, which it holds no threshold for")
    for name, a in arrays.items():
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise _bad_bundle(bundle, f"the fitted array {name} is not finite")
    return arrays, meta


def _trigger_data(bundle: str, trig: dict, data: str | None) -> str:
    """The prepared data holding the trigger set: ``--data``, else the path recorded in the bundle
    (from the current directory, then from the bundle's own directory)."""
    candidates = [data] if data else [trig["data_file"]]
    if not data and trig.get("data_file_from_bundle"):
        candidates.append(os.path.join(os.path.dirname(bundle), trig["data_file_from_bundle"]))
    for path in candidates:
        if Path(path).is_file():
            return path
    raise PoisonDetectError(
        f"trigger-set data {candidates[0]} not found; pass --data with the prepared .npz of data "
        f"set '{trig['dataset']}' (the workflow writes it under results/data/)"
    )


def _record(model: str, net, x, y, arrays, meta, *, batch_size: int, device):
    """What the detectors see of the suspicious model on the trigger set."""
    from poisondetect.activations import penultimate_outputs
    from poisondetect.detectors.autoencoder import ActivationAutoencoder
    from poisondetect.detectors.model_level import ModelRecord
    from poisondetect.model_level.scoring import model_weights

    acts, preds = penultimate_outputs(net, x, batch_size=batch_size, device=device, what=model)
    ae = ActivationAutoencoder.from_tensors(arrays, meta["autoencoder"], device="cpu")
    errors = require_finite(
        ae.score_samples(acts), f"{model}: reconstruction errors", NONFINITE_HINT, "trigger images"
    )
    return ModelRecord(
        Path(model).name,
        y,
        preds,
        activations=acts,
        errors=errors,
        weights=model_weights(net),
        network=net,
        images=x,
    )


def _statistics(record, arrays: dict, meta: dict, device: str = "auto") -> list[dict]:
    """Every statistic of every detector in the bundle on ``record``, with its calibration."""
    from poisondetect.detectors import registry
    from poisondetect.detectors.base import restore_fitted
    from poisondetect.metrics import empirical_pvalue, guaranteed_fpr

    cal = meta["calibration"]
    results = []
    # the detectors that learn from the others' statistics come last, and get them
    order = sorted(meta["detectors"], key=lambda n: "statistics" in registry.get("model", n).needs)
    for name in order:
        spec = meta["detectors"][name]
        det = registry.build("model", name, spec["params"], device=device)
        if "statistics" in det.needs:
            record.statistics = {r["detector"]: r["score"] for r in results}
        prefix = f"det.{name}."
        fitted = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        restore_fitted(det, fitted, spec["fitted"])
        for stat, value in det.statistics([record]).items():
            label = statistic_name(name, stat)
            require_finite(value, f"{record.name}: the {label} score", NONFINITE_HINT)
            c = cal["thresholds"][f"{name}:{stat}"]
            results.append(
                {
                    "detector": label,
                    "score": float(value[0]),
                    "threshold": c["threshold"],
                    "pvalue": empirical_pvalue(float(value[0]), c["honest_scores"]),
                    "guaranteed_fpr": guaranteed_fpr(len(c["honest_scores"]), cal["fpr"]),
                    "flagged": bool(value[0] > c["threshold"]),
                }
            )
    return results


def audit(
    bundle: str,
    model: str,
    data: str | None = None,
    device: str = "auto",
    *,
    arch: str | None = None,
) -> dict:
    """Every detector's score, calibrated threshold and empirical p-value for a suspicious
    checkpoint; the calibrated verdict of the configured verdict statistics; and, separately,
    the paper's rule. The result also carries the bundle's content digest."""
    from poisondetect.checkpoints import check_arch, load_checkpoint
    from poisondetect.data import load_prepared
    from poisondetect.runtime import pick_device

    arrays, meta = verify_bundle(bundle)
    trig, gm, cal = meta["trigger_set"], meta["genuine"], meta["calibration"]
    arch = check_arch(arch, gm.get("arch"), f"the detector bundle {bundle}")
    data = _trigger_data(bundle, trig, data)
    _idx, x, y = trigger_set(load_prepared(data), trig["max_samples"], trig["seed"])
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
        **{k: gm.get(k) for k in ("in_channels", "num_classes", "image_size", "width")},
    )
    record = _record(model, net, x, y, arrays, meta, batch_size=trig["batch_size"], device=dev)
    results = _statistics(record, arrays, meta, device)
    by_name = {r["detector"]: r for r in results}
    verdict_from = [statistic_name(*parse_statistic(v)) for v in cal["verdict"]]
    flagged_by = [v for v in verdict_from if by_name[v]["flagged"]]
    out = {
        "model": str(model),
        "bundle_digest": meta["digest"],
        "verdict": "POISONED" if flagged_by else "not poisoned",
        "flagged": bool(flagged_by),
        "verdict_from": verdict_from,
        "flagged_by": flagged_by,
        "fpr": cal["fpr"],
        "guaranteed_fpr": max(by_name[v]["guaranteed_fpr"] for v in verdict_from),
        "n_trigger": len(y),
        "detectors": results,
    }
    rule = cal.get("paper_rule")
    if rule and statistic_name(*parse_statistic(rule)) in by_name:
        margin = by_name[statistic_name(*parse_statistic(rule))]["score"]
        score = by_name[parse_statistic(rule)[0]]["score"]
        out["paper"] = {
            "statistic": rule,
            "score": score,
            "threshold": score - margin,
            "flagged": bool(margin > 0),
        }
    return out
