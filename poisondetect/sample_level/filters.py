"""The sample-level detectors' stage (Razmi & Xiong, CAE / CAE+): ``fit_filters`` fits registered
detectors (``detectors.registry``, level "sample"), each on the first rounds' pooled training data
(contaminated or clean), then filters each evaluation round with it before the SVM is retrained.
The networks they are made of come from ``sample_level.networks``. Nothing here depends on which
detector it is.

``make_detector`` and ``apply_detector`` are also the ``filter`` command's path through the same
detector code (``poisondetect.filtering``). Result files hold no wall times (the jobs'
``benchmark:`` files do), so a rerun on the same machine writes the same bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from poisondetect.detectors.networks import networks
from poisondetect.io import atomic_path, write_json
from poisondetect.sample_level.networks import NetworkStore
from poisondetect.sample_level.poisoning import fitting_set, load_poisoned, svm_accuracy

log = logging.getLogger(__name__)

# the files one detector writes in a cell's directory (the rules declare the same paths)
FILTER_FILES = {
    "scores": "filter/{detector}_{train_on}.parquet",
    "summary": "filter/{detector}_{train_on}.json",
}


def make_detector(
    detector: str,
    params: dict,
    shared: dict,
    *,
    arch: str,
    seed: int,
    device: str,
    svm: dict | None = None,
):
    """A new sample-level detector from the registry: its config block ``params``, plus the shared
    auto-encoder settings, ``arch``, ``seed``, ``device`` and the task's SVM arguments ``svm``
    where its constructor takes them."""
    from poisondetect.detectors.registry import build

    return build("sample", detector, params, **shared, arch=arch, seed=seed, device=device, svm=svm)


def apply_detector(det, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """One training set through a fitted sample-level detector: ``score``, ``flagged`` (its
    ``predict``) and its named sub-scores, one value per point."""
    return {
        "score": det.score_samples(x, y),
        "flagged": np.asarray(det.predict(x, y), dtype=bool),
        **det.sub_scores(x, y),
    }


def _filter_round(det, P: dict, i: int, svm: dict) -> tuple[pd.DataFrame, list[dict]]:
    """One evaluation round through a fitted detector: its per-point table, and the metrics of its
    own decision (``own``: its ``predict``) and of top-K (K = the round's poison count), each with
    the SVM retrained on ``det.repair`` of the kept points."""
    from poisondetect.detectors.decision import top_k_decision
    from poisondetect.metrics import filter_metrics

    x, y, mask, kind = P["x"][i], P["y"][i], P["is_poison"][i], P["poison_kind"][i]
    out = apply_detector(det, x, y)
    points = pd.DataFrame(
        {
            "round": i,
            "point": np.arange(len(y)),
            "label": y,
            "is_poison": mask,
            "poison_kind": kind,
            **out,
        }
    )
    metrics = []
    for decision, flags in (
        ("own", out["flagged"]),
        ("topk", top_k_decision(out["score"], int(mask.sum()))),
    ):
        keep = ~flags
        acc = svm_accuracy(det.repair(x[keep]), y[keep], P["x_test"][i], P["y_test"][i], svm)
        metrics.append(
            {
                "decision": decision,
                "round": i,
                **filter_metrics(mask, flags, out["score"]),
                "svm_accuracy": acc,
            }
        )
    return points, metrics


def fit_filter(
    poisoned: str,
    scores_out: str,
    summary_out: str,
    *,
    detector: str,
    params: dict,
    shared: dict,
    train_on: str,
    n_detector_rounds: int,
    arch: str,
    svm: dict,
    seed: int,
    device: str,
    cell: dict,
    network_store: NetworkStore | None = None,
) -> None:
    """Fit one registered detector on the pooled first rounds; filter and retrain on the others.

    ``params`` is the detector's config block (its constructor's keyword arguments); ``shared``
    (the auto-encoders' settings), ``arch``, ``seed`` and ``device`` go to the detectors whose
    constructors take them. A detector made of networks (``detectors.networks``) takes them from
    ``network_store``: fitted once for the cell and shared with the other detectors made of them.
    Writes the per-point scores (Parquet) and the summary over the evaluation rounds, one row per
    decision (JSON).
    """
    P = load_poisoned(poisoned)
    nd, n_rounds = n_detector_rounds, len(P["x"])
    x_fit, y_fit = fitting_set(P, train_on, nd)
    t0 = time.perf_counter()
    det = make_detector(detector, params, shared, arch=arch, seed=seed, device=device, svm=svm)
    specs = networks(detector, params, **shared, arch=arch, seed=seed)
    if specs:  # made of networks: each fitted once for the cell (a file, or this job's store)
        store = network_store if network_store is not None else NetworkStore()
        fitted = {
            role: store.get(kind, s, x_fit, y_fit, device) for role, (kind, s) in specs.items()
        }
        det.fit(x_fit, y_fit, networks=fitted)
    else:
        det.fit(x_fit, y_fit)
    log.info(
        "%s fitted on %d %s points in %.1fs",
        detector,
        len(y_fit),
        train_on,
        time.perf_counter() - t0,
    )
    points, metrics = [], []
    for i in range(nd, n_rounds):
        p, m = _filter_round(det, P, i, svm)
        p.insert(2, "detector", detector)
        points.append(p)
        metrics += m
    with atomic_path(scores_out) as tmp:
        pd.concat(points, ignore_index=True).to_parquet(tmp, index=False)
    rounds = slice(nd, n_rounds)
    summary = [
        {
            **cell,
            "detector": detector,
            "decision": decision,
            "train_on": train_on,
            **{k: g[k].mean() for k in ("precision", "recall", "f1", "auroc", "svm_accuracy")},
            "undefended_accuracy": float(P["acc_undefended"][rounds].mean()),
            "clean_accuracy": float(P["acc_clean"][rounds].mean()),
            "n_eval_rounds": n_rounds - nd,
        }
        for decision, g in pd.DataFrame(metrics).groupby("decision", sort=False)
    ]
    own = summary[0]
    log.info(
        "%-16s F1 %.3f  AUROC %.3f  SVM accuracy %.3f (undefended %.3f, clean %.3f)",
        detector,
        own["f1"],
        own["auroc"],
        own["svm_accuracy"],
        own["undefended_accuracy"],
        own["clean_accuracy"],
    )
    write_json(summary_out, summary)


def fit_filters(
    poisoned: str,
    cell_dir: str,
    *,
    detectors: dict[str, dict],
    train_on: str,
    networks: list[str] = (),
    **settings,
) -> None:
    """``fit_filter`` for each of ``detectors`` (name -> its config block) in turn, writing each
    one's files in ``cell_dir`` (``FILTER_FILES``); ``settings`` as for ``fit_filter``. The
    networks the detectors are made of come from the files ``networks``, or are fitted once here
    and shared between the detectors."""
    store = NetworkStore(networks)
    for i, (name, params) in enumerate(detectors.items(), 1):
        if len(detectors) > 1:
            log.info("detector %d of %d: %s", i, len(detectors), name)
        files = {
            k: str(Path(cell_dir) / rel.format(detector=name, train_on=train_on))
            for k, rel in FILTER_FILES.items()
        }
        fit_filter(
            poisoned,
            files["scores"],
            files["summary"],
            detector=name,
            params=params,
            train_on=train_on,
            network_store=store,
            **settings,
        )
