"""Stages of the sample-level workflow (Razmi & Xiong, CAE / CAE+); each is called by one script.

1. ``build_rounds``: class-balanced train / validation / test points for every periodic-update round.
2. ``poison_all``: the attack's poisons added to every round's training set (cached, so that a
   change of detector never recomputes an attack), with the undefended and clean SVM accuracies.
3. ``fit_filter``: one registered detector (``detectors.registry``, level "sample") fitted on the
   first rounds' pooled training data (contaminated or clean), then used to filter each evaluation
   round before the SVM is retrained. Nothing here depends on which detector it is.
4. ``collect``: the tidy ``filtering.csv``.
5. ``analyse_filtering`` / ``analyse_scores``: the tidy tables behind the figures (accuracy vs
   poison rate, clean vs contaminated, ablation; sub-score scatter, F1 vs K, F1 vs a scoring
   parameter), which ``report`` only draws.

``filter_points`` is the ``filter`` command's path through the same detector code.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path, read_json, write_json
from poisondetect.seeds import derive_seed

log = logging.getLogger(__name__)


def svm_accuracy(x_tr, y_tr, x_te, y_te, params: dict) -> float:
    """Test accuracy of an SVC retrained on (x_tr, y_tr); a one-class training set predicts that
    class (filtering may remove every point of a class)."""
    from sklearn.svm import SVC

    if len(np.unique(y_tr)) < 2:
        pred = np.full(len(y_te), y_tr[0] if len(y_tr) else 0)
    else:
        pred = SVC(**params).fit(x_tr, y_tr).predict(x_te)
    return float((pred == y_te).mean())


# -- stages -----------------------------------------------------------------------------------
def build_rounds(data: str, out: str, *, classes: list[int], rounds: dict, seed: int) -> None:
    from poisondetect.data import load_prepared
    from poisondetect.rounds import make_rounds

    ds = load_prepared(data)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    r = make_rounds(
        flat(ds.x_train),
        ds.y_train,
        flat(ds.x_test),
        ds.y_test,
        classes=tuple(classes),
        n_rounds=rounds["n_rounds"],
        n_train=rounds["n_train"],
        n_val=rounds["n_val"],
        n_test=rounds["n_test"],
        seed=seed,
    )
    r.save(out)
    log.info(
        "%d rounds of %d train / %d val / %d test points, classes %s of %s",
        rounds["n_rounds"],
        rounds["n_train"],
        rounds["n_val"],
        rounds["n_test"],
        classes,
        ds.name,
    )


def poison_all(
    rounds: str, out: str, *, attack: str, n_poison: int, svm: dict, optimal: dict, seed: int
) -> None:
    """Poison every round's training set; store it with the undefended and clean accuracies."""
    from poisondetect.attacks.svm import poison
    from poisondetect.rounds import Rounds

    r = Rounds.load(rounds)
    xs, ys, masks, kinds, acc_poisoned, acc_clean = [], [], [], [], [], []
    t0 = time.perf_counter()
    for i in range(r.n_rounds):
        x, y, m, k = poison(
            attack,
            r.x_train[i],
            r.y_train[i],
            r.x_val[i],
            r.y_val[i],
            n_poison,
            svm,
            seed=derive_seed(seed, i),
            **optimal,
        )
        xs.append(x), ys.append(y), masks.append(m), kinds.append(k)
        acc_poisoned.append(svm_accuracy(x, y, r.x_test[i], r.y_test[i], svm))
        acc_clean.append(svm_accuracy(r.x_train[i], r.y_train[i], r.x_test[i], r.y_test[i], svm))
        if (i + 1) % max(1, r.n_rounds // 10) == 0 or i + 1 == r.n_rounds:
            log.info(
                "round %d/%d poisoned (%s, %d poisons): SVM accuracy %.3f (clean %.3f), %.1fs",
                i + 1,
                r.n_rounds,
                attack,
                n_poison,
                acc_poisoned[-1],
                acc_clean[-1],
                time.perf_counter() - t0,
            )
    with atomic_path(out) as tmp:
        np.savez(
            tmp,
            x=np.stack(xs),
            y=np.stack(ys),
            is_poison=np.stack(masks),
            poison_kind=np.stack(kinds),
            acc_undefended=np.array(acc_poisoned),
            acc_clean=np.array(acc_clean),
            x_test=r.x_test,
            y_test=r.y_test,
            x_clean=r.x_train,
            y_clean=r.y_train,
        )


def load_poisoned(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError as e:
        raise PoisonDetectError(f"{path} not found") from e
    except Exception as e:  # truncated zip, bad header
        raise PoisonDetectError(
            f"{path} is corrupt or incomplete ({e}); delete it and rerun the poison_rounds job"
        ) from e


def make_detector(detector: str, params: dict, shared: dict, *, arch: str, seed: int, device: str):
    """A new sample-level detector from the registry: its config block ``params``, plus the shared
    auto-encoder settings, ``arch``, ``seed`` and ``device`` where its constructor takes them."""
    from poisondetect.detectors.registry import build

    return build("sample", detector, params, **shared, arch=arch, seed=seed, device=device)


def apply_detector(det, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """One training set through a fitted sample-level detector: ``score``, ``flagged`` (its
    ``predict``) and its named sub-scores, one value per point."""
    return {
        "score": det.score_samples(x, y),
        "flagged": np.asarray(det.predict(x, y), dtype=bool),
        **det.sub_scores(x, y),
    }


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
) -> None:
    """Fit one registered detector on the pooled first rounds; filter and retrain on the others.

    ``params`` is the detector's config block (its constructor's keyword arguments); ``shared``
    (the auto-encoders' settings), ``arch``, ``seed`` and ``device`` go to the detectors whose
    constructors take them. Each evaluation round is filtered by the detector's decision (``gmm``:
    its ``predict``) and by the top-K rule with K = the round's poison count (``topk``); the SVM is
    retrained on ``det.repair`` of the kept points.
    """
    from poisondetect.detectors.decision import top_k_decision
    from poisondetect.metrics import filter_metrics

    P = load_poisoned(poisoned)
    nd, n_rounds = n_detector_rounds, len(P["x"])
    if nd >= n_rounds:
        raise PoisonDetectError(
            f"n_detector_rounds = {nd} leaves no evaluation round of {n_rounds}"
        )
    if train_on == "contaminated":
        x_fit, y_fit = P["x"][:nd], P["y"][:nd]
    elif train_on == "clean":
        x_fit, y_fit = P["x_clean"][:nd], P["y_clean"][:nd]
    else:
        raise PoisonDetectError(f"train_on must be contaminated or clean, got {train_on!r}")
    x_fit, y_fit = x_fit.reshape(-1, x_fit.shape[-1]), y_fit.reshape(-1)
    t0 = time.perf_counter()
    det = make_detector(detector, params, shared, arch=arch, seed=seed, device=device)
    det.fit(x_fit, y_fit)
    fit_seconds = time.perf_counter() - t0
    log.info("%s fitted on %d %s points in %.1fs", detector, len(y_fit), train_on, fit_seconds)
    score_rows, metric_rows = [], []
    for i in range(nd, n_rounds):
        x, y, mask, kind = P["x"][i], P["y"][i], P["is_poison"][i], P["poison_kind"][i]
        out = apply_detector(det, x, y)
        score_rows.append(
            pd.DataFrame(
                {
                    "round": i,
                    "point": np.arange(len(y)),
                    "detector": detector,
                    "label": y,
                    "is_poison": mask,
                    "poison_kind": kind,
                    **out,
                }
            )
        )
        for decision, flags in (
            ("gmm", out["flagged"]),
            ("topk", top_k_decision(out["score"], int(mask.sum()))),
        ):
            keep = ~flags
            acc = svm_accuracy(det.repair(x[keep]), y[keep], P["x_test"][i], P["y_test"][i], svm)
            metric_rows.append(
                {
                    "decision": decision,
                    "round": i,
                    **filter_metrics(mask, flags, out["score"]),
                    "svm_accuracy": acc,
                }
            )
    with atomic_path(scores_out) as tmp:
        pd.concat(score_rows, ignore_index=True).to_parquet(tmp, index=False)
    m = pd.DataFrame(metric_rows)
    eval_rounds = slice(nd, n_rounds)
    summary = []
    for decision, g in m.groupby("decision", sort=False):
        summary.append(
            {
                **cell,
                "detector": detector,
                "decision": decision,
                "train_on": train_on,
                "precision": g["precision"].mean(),
                "recall": g["recall"].mean(),
                "f1": g["f1"].mean(),
                "auroc": g["auroc"].mean(),
                "svm_accuracy": g["svm_accuracy"].mean(),
                "undefended_accuracy": float(P["acc_undefended"][eval_rounds].mean()),
                "clean_accuracy": float(P["acc_clean"][eval_rounds].mean()),
                "n_eval_rounds": n_rounds - nd,
                "fit_seconds": fit_seconds,
            }
        )
        if decision == "gmm":
            log.info(
                "%-16s F1 %.3f  AUROC %.3f  SVM accuracy %.3f (undefended %.3f, clean %.3f)",
                detector,
                summary[-1]["f1"],
                summary[-1]["auroc"],
                summary[-1]["svm_accuracy"],
                summary[-1]["undefended_accuracy"],
                summary[-1]["clean_accuracy"],
            )
    write_json(summary_out, summary)


def filter_points(
    x: np.ndarray,
    y: np.ndarray,
    *,
    detector: str,
    params: dict,
    shared: dict,
    arch: str,
    seed: int,
    device: str,
) -> pd.DataFrame:
    """Fit a detector on a user's training set and score the same points (``filter`` command):
    one row per point with ``index``, ``label``, ``score``, the sub-scores and ``flagged``."""
    det = make_detector(detector, params, shared, arch=arch, seed=seed, device=device)
    out = apply_detector(det.fit(x, y), x, y)
    flagged = out.pop("flagged")
    return pd.DataFrame({"index": np.arange(len(y)), "label": y, **out, "flagged": flagged})


FILTERING_COLUMNS = [
    "task",
    "attack",
    "n_poison",
    "poison_rate",
    "detector",
    "decision",
    "train_on",
    "seed",
    "precision",
    "recall",
    "f1",
    "auroc",
    "svm_accuracy",
    "undefended_accuracy",
    "clean_accuracy",
    "n_eval_rounds",
    "fit_seconds",
]


def collect(summaries: list[str], out: str) -> pd.DataFrame:
    """The tidy filtering table, with one no-defence row per (task, attack, poisons, seed)."""
    rows = [r for p in summaries for r in read_json(p)]
    df = pd.DataFrame(rows)
    keys = ["task", "attack", "n_poison", "poison_rate", "seed"]
    none = df.drop_duplicates(keys)[
        keys + ["undefended_accuracy", "clean_accuracy", "n_eval_rounds"]
    ].copy()
    none["detector"], none["decision"], none["train_on"] = "none", "none", "none"
    none["svm_accuracy"] = none["undefended_accuracy"]
    df = pd.concat([df, none], ignore_index=True)
    df = (
        df.reindex(columns=FILTERING_COLUMNS)
        .sort_values(["task", "attack", "n_poison", "seed", "detector", "decision", "train_on"])
        .reset_index(drop=True)
    )
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return df


# -- analyses: tidy tables the report draws ------------------------------------------------------
def _task_rows(df: pd.DataFrame, task: str, train_on: tuple[str, ...]) -> pd.DataFrame:
    """Rows of one task with the detectors' own decision (and the no-defence rows)."""
    keep = (
        (df["task"] == task)
        & df["decision"].isin(["gmm", "none"])
        & df["train_on"].isin([*train_on, "none"])
    )
    return df[keep]


def analyse_filtering(
    filtering_csv: str,
    task: str,
    out: dict[str, str],
    *,
    ablation: list[str],
    attacks: list[str] | None = None,
    n_poison: int,
    seed: int,
) -> None:
    """The tidy tables behind Figs. 5-7 from ``filtering.csv`` (rows in the table's order).

    - ``accuracy``: SVM accuracy after filtering per attack, poison % and detector (contaminated
      training), the no-defence rows, and one ``clean_data`` row per attack and poison %.
    - ``clean_vs_contaminated``: F1 of every detector by the data it was trained on.
    - ``ablation``: F1 of the ``ablation`` detectors at ``n_poison`` poisons and ``seed``
      (attacks in the order of ``attacks``, detectors in the order of ``ablation``).
    """
    df = pd.read_csv(filtering_csv)
    d = _task_rows(df, task, ("contaminated",)).copy()
    d["poison_pct"] = d["poison_rate"] * 100
    clean = d.groupby(["attack", "poison_pct"], as_index=False)["clean_accuracy"].mean()
    clean["detector"], clean["svm_accuracy"] = "clean_data", clean["clean_accuracy"]
    cols = ["attack", "poison_pct", "n_poison", "seed", "detector", "svm_accuracy"]
    acc = pd.concat([d, clean], ignore_index=True).reindex(columns=cols)
    cvc = _task_rows(df, task, ("contaminated", "clean"))
    cvc = cvc[cvc["decision"] == "gmm"][
        ["attack", "n_poison", "seed", "detector", "train_on", "f1"]
    ]
    abl = d[
        (d["decision"] == "gmm")
        & (d["n_poison"] == n_poison)
        & (d["seed"] == seed)
        & d["detector"].isin(ablation)
    ][["attack", "detector", "f1"]].rename(columns={"f1": "F1"})
    rank = {a: i for i, a in enumerate(attacks or sorted(abl["attack"].unique()))}
    rank.update({d: i for i, d in enumerate(ablation)})
    abl = abl.sort_values(["attack", "detector"], key=lambda c: c.map(rank), kind="stable")
    for key, table in (("accuracy", acc), ("clean_vs_contaminated", cvc), ("ablation", abl)):
        with atomic_path(out[key]) as tmp:
            table.to_csv(tmp, index=False)


def analyse_scores(
    scores: dict[str, str],
    out: dict[str, str],
    *,
    detector: str,
    params: dict,
    scatter: list[str],
    sweep_param: str,
    sweep_values: list[float],
    n_poison: int,
    seed: int,
) -> None:
    """The tidy tables behind Figs. 2-4 from one detector's stored per-point scores.

    ``scores`` maps each attack to the detector's ``.parquet`` at ``n_poison`` poisons. Writes
    ``scatter`` (the two sub-scores named in ``scatter`` per point), ``f1_vs_k`` (mean F1 over the
    rounds of the top-K rule, K = 0 .. 2 * n_poison) and ``sweep`` (mean F1 of the GMM decision
    when the detector, built from its config block ``params``, rescores the stored sub-scores with
    ``sweep_param`` set to each value; ``current`` marks the configured value).
    """
    from poisondetect.detectors.decision import gmm_decision, top_k_decision
    from poisondetect.detectors.registry import build
    from poisondetect.metrics import filter_metrics

    det = build("sample", detector, params, seed=seed)
    current = det.get_params()[sweep_param]
    points, curve, sweep = [], [], []
    for attack, path in scores.items():
        df = pd.read_parquet(path)
        missing = [c for c in scatter if c not in df.columns]
        if missing:
            raise PoisonDetectError(
                f"{path} has no sub-score(s) {missing}; sample_level.figures.scatter must name"
                f" sub-scores of {detector}"
            )
        cell = {"detector": detector, "attack": attack, "n_poison": n_poison}
        points.append(
            df[["round", "point", "is_poison", *scatter]].assign(**cell)[
                ["detector", "attack", "n_poison", "round", "point", "is_poison", *scatter]
            ]
        )
        rounds = [g for _, g in df.groupby("round")]
        for k in range(0, 2 * max(n_poison, 1) + 1):
            f1 = [
                filter_metrics(g["is_poison"].to_numpy(), top_k_decision(g["score"].to_numpy(), k))[
                    "f1"
                ]
                for g in rounds
            ]
            curve.append({**cell, "K": k, "F1": float(np.mean(f1))})
        subs = [c for c in df.columns if c not in _SCORE_KEYS]
        for v in sorted(set(sweep_values) | {current}):
            det.set_params(**{sweep_param: v})
            f1 = [
                filter_metrics(
                    g["is_poison"].to_numpy(),
                    gmm_decision(det.score_from({c: g[c].to_numpy() for c in subs}), seed=seed),
                )["f1"]
                for g in rounds
            ]
            sweep.append(
                {
                    **cell,
                    "param": sweep_param,
                    "value": v,
                    "F1": float(np.mean(f1)),
                    "current": v == current,
                }
            )
        det.set_params(**{sweep_param: current})
    for key, rows in (
        ("scatter", pd.concat(points, ignore_index=True)),
        ("f1_vs_k", pd.DataFrame(curve)),
        ("sweep", pd.DataFrame(sweep)),
    ):
        with atomic_path(out[key]) as tmp:
            rows.to_csv(tmp, index=False)


# the columns of a scores parquet that are not sub-scores
_SCORE_KEYS = (
    "round",
    "point",
    "detector",
    "label",
    "is_poison",
    "poison_kind",
    "score",
    "flagged",
)
