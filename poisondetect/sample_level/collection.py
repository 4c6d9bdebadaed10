"""The collection stage of the sample-level part: every detector's summary of every cell in the
tidy ``filtering.csv`` (with one no-defence row per cell), and the conclusions of the run."""

from __future__ import annotations

import logging

import pandas as pd

from poisondetect.io import atomic_path, atomic_write_text, read_json

log = logging.getLogger(__name__)

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
]


def summary_lines(df: pd.DataFrame) -> list[str]:
    """The conclusions of a run, per task, attack and poison rate: the best detector by F1 of its
    own decision (with its retrained-SVM accuracy) against the undefended and clean accuracies."""
    from poisondetect.detectors.registry import label

    lines = []
    own = df[(df["decision"] == "own") & (df["train_on"] == "contaminated")]
    keys = ["task", "attack", "poison_rate"]
    for key, g in own.groupby(keys, sort=True):
        means = g.groupby("detector")[["f1", "svm_accuracy"]].mean()
        best = means.sort_values(["f1", "svm_accuracy"], ascending=False).iloc[0]
        ref = df[(df[keys] == pd.Series(dict(zip(keys, key, strict=True)))).all(axis=1)]
        lines.append(
            f"{key[0]} {key[1]} {key[2] * 100:g}%: best {label('sample', best.name)} F1 "
            f"{best['f1']:.2f}, SVM accuracy {best['svm_accuracy']:.3f} (undefended "
            f"{ref['undefended_accuracy'].mean():.3f}, clean {ref['clean_accuracy'].mean():.3f}; "
            f"{g['seed'].nunique()} seed(s))"
        )
    return lines


def collect(summaries: list[str], out: str, conclusions_out: str | None = None) -> pd.DataFrame:
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
    lines = summary_lines(df)
    for line in lines:
        log.info("%s", line)
    if conclusions_out:
        atomic_write_text(conclusions_out, "".join(f"{line}\n" for line in lines))
    return df
