"""Analyses of the sample-level part: the tidy tables behind the figures, which ``report`` only
draws (accuracy vs poison rate, clean vs contaminated training, the ablation; sub-score scatter,
F1 vs K, F1 vs a scoring parameter)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisondetect.errors import PoisonDetectError
from poisondetect.io import atomic_path

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


def _task_rows(df: pd.DataFrame, task: str, train_on: tuple[str, ...]) -> pd.DataFrame:
    """Rows of one task with the detectors' own decision (and the no-defence rows)."""
    keep = (
        (df["task"] == task)
        & df["decision"].isin(["own", "none"])
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

    - ``accuracy``: SVM accuracy after filtering and F1 (the detector's own decision; undefined
      without poisons) per attack, poison % and detector (contaminated training), the no-defence
      rows, and one ``clean_data`` row per attack and poison %.
    - ``clean_vs_contaminated``: F1 of every detector by the data it was trained on.
    - ``ablation``: F1 of the ``ablation`` detectors at ``n_poison`` poisons and ``seed``
      (attacks in the order of ``attacks``, detectors in the order of ``ablation``).
    """
    df = pd.read_csv(filtering_csv)
    d = _task_rows(df, task, ("contaminated",)).copy()
    d["poison_pct"] = d["poison_rate"] * 100
    d.loc[d["n_poison"] == 0, "f1"] = float("nan")  # no poison: F1 is undefined
    clean = d.groupby(["attack", "poison_pct"], as_index=False)["clean_accuracy"].mean()
    clean["detector"], clean["svm_accuracy"] = "clean_data", clean["clean_accuracy"]
    cols = ["attack", "poison_pct", "n_poison", "seed", "detector", "svm_accuracy", "f1"]
    acc = pd.concat([d, clean], ignore_index=True).reindex(columns=cols)
    cvc = _task_rows(df, task, ("contaminated", "clean"))
    cvc = cvc[cvc["decision"] == "own"][
        ["attack", "n_poison", "seed", "detector", "train_on", "f1"]
    ]
    abl = d[
        (d["decision"] == "own")
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
