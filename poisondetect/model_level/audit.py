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
import re
from pathlib import Path

import numpy as np

from poisondetect.detectors.base import parse_statistic, statistic_name
from poisondetect.errors import NONFINITE_HINT, PoisonDetectError, require_finite
from poisondetect.io import sha256_array
from poisondetect.model_level.cell import BUNDLE_KIND, trigger_set

_BUNDLE_KEYS = ("autoencoder", "detectors", "trigger_set", "genuine", "calibration")
# trigger_set fields and the types they must have
_TRIGGER_KEYS = {
    "data_file": str,
    "dataset": str,
    "max_samples": (int, type(None)),  # None: the whole test set
    "seed": int,
    "n": int,
    "images_sha256": str,
    "batch_size": int,
}
NO_EXPECTED_DIGEST = (
    "integrity checked against the file itself only: the digest inside a bundle is recomputed by "
    "whoever edits it; pass --expect-digest (from the run's bundles.csv) to prove the bundle is "
    "the one your workflow wrote"
)


def _bad_bundle(bundle: str, problem: str) -> PoisonDetectError:
    return PoisonDetectError(
        f"{bundle}: {problem}; the detector bundle is damaged or was altered: rebuild it with the "
        "workflow (snakemake --forcerun calibrate) or get an intact copy"
    )


def _is_number(v) -> bool:
    """A finite number that a float holds (JSON's integers are unbounded)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _check_type(bundle: str, where: str, value, kind, what: str) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise _bad_bundle(bundle, f"its {where} must be {what}, got {type(value).__name__}")


def _check_calibration(bundle: str, cal: dict) -> None:
    """Types and shapes of the calibration, and every threshold derived again from the honest
    scores stored beside it: a stored threshold that differs is an alteration, so raising a
    threshold means forging a whole honest population."""
    from poisondetect.metrics import calibrated_threshold

    fpr = cal.get("fpr")
    if not _is_number(fpr) or not 0 < fpr < 1:
        raise _bad_bundle(
            bundle, f"its calibration.fpr must be a number in (0, 1), got {fpr!r:.40}"
        )
    for key, kind, what in (
        ("thresholds", dict, "a mapping"),
        ("verdict", list, "a list of statistic names"),
        ("honest_models", list, "a list of model names (bundles older than this release lack it)"),
    ):
        _check_type(bundle, f"calibration.{key}", cal.get(key), kind, what)
    honest = cal["honest_models"]
    if not honest or not all(isinstance(m, str) for m in honest):
        raise _bad_bundle(bundle, "its calibration.honest_models must name the honest models")
    if not cal["thresholds"]:
        raise _bad_bundle(bundle, "it holds no calibrated threshold")
    for name, c in cal["thresholds"].items():
        _check_type(bundle, f"calibration.thresholds[{name!r:.40}]", c, dict, "a mapping")
        scores = c.get("honest_scores")
        _check_type(bundle, f"honest scores of {name!r:.40}", scores, list, "a list")
        if len(scores) != len(honest) or not all(_is_number(v) for v in scores):
            raise _bad_bundle(
                bundle,
                f"the honest scores of {name!r:.40} must be {len(honest)} finite numbers, one "
                "per honest model",
            )
        thr = c.get("threshold")
        if not _is_number(thr):
            raise _bad_bundle(bundle, f"the threshold of {name!r:.40} is not finite")
        derived = calibrated_threshold(scores, fpr)
        if not math.isclose(thr, derived, rel_tol=1e-9, abs_tol=1e-12):
            raise _bad_bundle(
                bundle,
                f"the stored threshold of {name} ({thr:.6g}) is not the one its honest scores give "
                f"at the false-alarm rate {fpr:g} ({derived:.6g})",
            )
    verdict = cal["verdict"]
    if not verdict or not all(isinstance(v, str) for v in verdict):
        raise _bad_bundle(bundle, "its verdict names no detector statistic")
    missing = [v for v in verdict if ":".join(parse_statistic(v)) not in cal["thresholds"]]
    if missing:
        raise _bad_bundle(bundle, f"its verdict names {missing}, which it holds no threshold for")
    if "paper_rule" in cal and not isinstance(cal["paper_rule"], str | None):
        raise _bad_bundle(bundle, "its calibration.paper_rule must be a statistic name")


def verify_bundle(bundle: str, expected: str | None = None, source: str = "") -> tuple[dict, dict]:
    """The bundle's arrays and metadata, once its digest (against its content, then against
    ``expected``, from ``source``, when there is one), the types of its metadata, its calibration
    (thresholds derived again) and its fitted arrays check."""
    from poisondetect.bundles import read_bundle

    arrays, meta = read_bundle(bundle, BUNDLE_KIND, require_digest=True)
    if expected is not None and str(meta["digest"]).lower() != expected:
        raise PoisonDetectError(
            f"{bundle}: its digest {str(meta['digest'])[:16]}... is not the expected "
            f"{expected[:16]}... ({source}): this is not the bundle your workflow wrote; do not "
            "trust a verdict from it"
        )
    missing = [k for k in _BUNDLE_KEYS if not isinstance(meta.get(k), dict)]
    if missing:
        raise _bad_bundle(bundle, f"its metadata lacks the mappings {', '.join(missing)}")
    trig = meta["trigger_set"]
    for key, kind in _TRIGGER_KEYS.items():
        if key not in trig:
            raise _bad_bundle(bundle, f"its metadata lacks trigger_set.{key}")
        what = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        _check_type(bundle, f"trigger_set.{key}", trig[key], kind, what)
    for name, spec in meta["detectors"].items():
        _check_type(bundle, f"detectors[{name!r:.40}]", spec, dict, "a mapping")
        for key in ("params", "fitted"):
            _check_type(bundle, f"detectors[{name!r:.40}].{key}", spec.get(key), dict, "a mapping")
    _check_calibration(bundle, meta["calibration"])
    for name, a in arrays.items():
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise _bad_bundle(bundle, f"the fitted array {name} is not finite")
    return arrays, meta


def expected_digest(bundle: str, expect: str | None) -> tuple[str | None, str]:
    """The digest the bundle must have, and where it comes from: ``--expect-digest``, else the
    ``bundles.csv`` of the run that wrote the bundle (results/model_level/bundles.csv, found
    from the bundle's directory upwards), else none (then the digest is checked against the
    file itself only)."""
    if expect is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{16,128}", expect.strip()):
            raise PoisonDetectError(
                f"--expect-digest must be the hexadecimal digest from bundles.csv, got "
                f"{expect!r:.80}"
            )
        return expect.strip().lower(), "--expect-digest"
    target = os.path.realpath(bundle)
    here = os.path.dirname(target)
    for _ in range(6):
        table = os.path.join(here, "bundles.csv")
        if os.path.isfile(table):
            import pandas as pd

            try:
                rows = pd.read_csv(table, usecols=["bundle", "digest"], dtype=str)
            except (ValueError, OSError, pd.errors.ParserError) as e:
                raise PoisonDetectError(
                    f"{table}: not a bundles.csv the workflow wrote ({e}); pass --expect-digest"
                ) from e
            roots = [here, os.path.dirname(here), os.path.dirname(os.path.dirname(here))]
            for path, digest in zip(rows["bundle"], rows["digest"], strict=True):
                if any(os.path.realpath(os.path.join(r, str(path))) == target for r in roots):
                    return str(digest).lower(), table
        here = os.path.dirname(here)
    return None, ""


def _trigger_data(bundle: str, trig: dict) -> str:
    """The prepared data holding the trigger set when no ``--data`` is given: the path recorded in
    the bundle (from the current directory, then from the bundle's own directory)."""
    candidates = [trig["data_file"]]
    if isinstance(trig.get("data_file_from_bundle"), str):
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
    from poisondetect.metrics import empirical_pvalue

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
                    "flagged": bool(value[0] > c["threshold"]),
                }
            )
    return results


def verdict(by_name: dict, cal: dict) -> dict:
    """The calibrated verdict of one model from its statistics (``by_name``: statistic name ->
    its result): one p-value over the verdict's statistics against the honest models' scores
    stored in the bundle (``metrics.verdict_pvalue``, made one as the calibration's ``combine``
    says: bundles written before it had one took the smallest p-value), flagged at
    ``metrics.verdict_cutoff``."""
    from poisondetect.metrics import (
        guaranteed_fpr,
        replicates_needed,
        verdict_cutoff,
        verdict_pvalue,
    )

    names = [statistic_name(*parse_statistic(v)) for v in cal["verdict"]]
    keys = [":".join(parse_statistic(v)) for v in cal["verdict"]]
    honest = np.array([cal["thresholds"][k]["honest_scores"] for k in keys], dtype=float).T
    n, fpr = len(honest), cal["fpr"]
    combine = cal.get("combine", "smallest_p")
    p = verdict_pvalue([by_name[v]["score"] for v in names], honest, combine)
    flagged = p <= verdict_cutoff(n, fpr) + 1e-12
    rate = guaranteed_fpr(n, fpr)
    # smallest_p: the statistics this model is at least as extreme on as the flagged p-value;
    # fisher: those it is unusual on at the configured rate (the evidence adds up), or its most
    # unusual one
    pvalues = {v: by_name[v]["pvalue"] for v in names}
    level = max(p, 1 / (n + 1)) if combine == "smallest_p" else max(fpr, min(pvalues.values()))
    return {
        "verdict": "POISONED" if flagged else "not poisoned",
        "flagged": bool(flagged),
        "verdict_from": names,
        "combine": combine,
        "flagged_by": [v for v in names if pvalues[v] <= level] if flagged else [],
        "verdict_pvalue": p,
        "fpr": fpr,
        "guaranteed_fpr": rate,
        "fpr_reachable": rate <= fpr + 1e-12,
        "n_honest": n,
        "replicates_needed": replicates_needed(fpr),
    }


def audit(
    bundle: str,
    model: str,
    data: str | None = None,
    device: str = "auto",
    *,
    arch: str | None = None,
    expect_digest: str | None = None,
) -> dict:
    """Every detector's score, calibrated threshold and empirical p-value for a suspicious
    checkpoint; the calibrated verdict (one p-value over the verdict's statistics, one
    threshold); and, separately, the paper's rule. The bundle's digest is checked against
    ``expect_digest`` or the run's bundles.csv when there is one (``integrity`` says which)."""
    from poisondetect.data import load_prepared

    # a user's own files first (every limit applies, errors name the option), then the bundle
    ds = None
    if data is not None:
        ds = load_prepared(data, user_file=True, label=f"--data {data}")
    from poisondetect.checkpoints import check_arch, load_checkpoint  # torch: after --data
    from poisondetect.runtime import pick_device

    expected, source = expected_digest(bundle, expect_digest)
    arrays, meta = verify_bundle(bundle, expected, source)
    integrity = f"digest matches {source}" if expected is not None else NO_EXPECTED_DIGEST
    trig, gm, cal = meta["trigger_set"], meta["genuine"], meta["calibration"]
    arch = check_arch(arch, gm.get("arch"), f"the detector bundle {bundle}")
    if ds is None:  # the path the bundle names: a bundle from elsewhere chooses it, so a user's
        data = _trigger_data(bundle, trig)
        label = f"the trigger-set data {data} (named in the bundle; or pass --data)"
        ds = load_prepared(data, user_file=True, label=label)
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
        **{k: gm.get(k) for k in ("in_channels", "num_classes", "image_size", "width")},
    )
    record = _record(model, net, x, y, arrays, meta, batch_size=trig["batch_size"], device=dev)
    results = _statistics(record, arrays, meta, device)
    by_name = {r["detector"]: r for r in results}
    out = {
        "model": str(model),
        "bundle_digest": meta["digest"],
        "integrity": integrity,
        **verdict(by_name, cal),
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
