"""Tables (CSV + LaTeX booktabs) and seaborn figures (PNG + PDF) for both parts of the workflow."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from poisondetect.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

_CELL = ["dataset", "arch", "scenario", "seed"]
_VARIANT_LABEL = {"genuine": "Genuine", "finetune": "Fine-tuned", "flip": "FA", "pattern": "PAA"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_table(df: pd.DataFrame, csv_path: str, tex_path: str, caption: str, label: str) -> None:
    """Write a table as CSV and as a booktabs LaTeX table, atomically."""
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp)
    tex = df.to_latex(
        na_rep="--",
        caption=caption,
        label=label,
        escape=True,
        multicolumn_format="c",
        float_format=lambda v: f"{v:.2f}",
    )
    if "\\toprule" not in tex:  # pandas uses booktabs rules; enforce for older versions
        tex = tex.replace("\\hline", "\\midrule")
    atomic_write_text(tex_path, tex)


def _column(row) -> str:
    v, e = row["variant"], row["epochs"]
    return _VARIANT_LABEL[v] if v == "genuine" else f"{_VARIANT_LABEL[v]} {int(e)}"


def _order(cols) -> list[str]:
    rank = {"Genuine": 0, "Fine-tuned": 1, "FA": 2, "PAA": 3}

    def key(c):
        name, _, e = c.partition(" ")
        return (rank.get(name, 9), int(e) if e.isdigit() else 0)

    return sorted(cols, key=key)


def _pivot(df: pd.DataFrame, value: str) -> pd.DataFrame:
    d = df.copy()
    d["column"] = d.apply(_column, axis=1)
    t = d.pivot_table(index=_CELL, columns="column", values=value, aggfunc="first", dropna=False)
    return t[_order(t.columns)]


def model_level_tables(detection_csv: str, out: dict[str, str]) -> None:
    """The paper's Tables 1-3 from the tidy detection table.

    ``out`` maps table1_csv, table1_tex, table2_csv, ... to paths.
    """
    df = pd.read_csv(detection_csv)
    t1 = (_pivot(df, "accuracy") * 100).round(2)
    write_table(
        t1,
        out["table1_csv"],
        out["table1_tex"],
        "Test accuracy (\\%) of the genuine, honestly fine-tuned and attacked models "
        "(FA = flipping attack, PAA = pattern addition attack, by fine-tune epochs).",
        "tab:accuracy",
    )
    attacks = df[df["variant"].isin(["flip", "pattern"])]
    t2 = (_pivot(attacks, "attack_success") * 100).round(2)
    write_table(
        t2,
        out["table2_csv"],
        out["table2_tex"],
        "Attack success (\\%): share of the attacked training images classified as the "
        "attacker's class.",
        "tab:attack-success",
    )
    d = df[df["variant"] != "genuine"].copy()
    d["detected"] = np.where(d["flagged"], "yes", "no")
    t3 = _pivot(d, "detected")
    write_table(
        t3,
        out["table3_csv"],
        out["table3_tex"],
        "Detection: the model is flagged poisoned when the mean reconstruction error of "
        "its activations on the trigger set exceeds $T_r = \\mu + \\sigma$ of the honest "
        "fine-tune's errors.",
        "tab:detection",
    )


def model_level_figure(
    scores: dict[str, str],
    summaries: dict[str, dict],
    png: str,
    pdf: str,
    title: str,
    *,
    bins: int = 50,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Fig. 5: histograms of per-image reconstruction errors of every model, threshold line."""
    import seaborn as sns

    plt = _plt()
    frames = []
    for name, path in scores.items():
        s = pd.read_parquet(path, columns=["error"])
        s["model"] = name
        frames.append(s)
    df = pd.concat(frames, ignore_index=True)
    threshold = next(iter(summaries.values()))["threshold"]
    sns.set_theme(context=context, style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4))
    order = list(scores)
    lo, hi = df["error"].clip(lower=1e-12).min(), df["error"].max()
    edges = np.geomspace(lo, hi, bins + 1) if hi > lo else bins
    sns.histplot(
        df,
        x="error",
        hue="model",
        hue_order=order,
        bins=edges,
        element="step",
        fill=False,
        stat="density",
        common_norm=False,
        palette=palette,
        ax=ax,
    )
    ax.set_xscale("log")
    ax.axvline(threshold, color="red", linestyle="--", linewidth=1.5)
    ax.text(threshold, ax.get_ylim()[1] * 0.95, " $T_r$", color="red", va="top")
    flagged = [n for n in order if summaries[n]["flagged"]]
    ax.set_xlabel("auto-encoder reconstruction error (MSE) per trigger image")
    ax.set_title(f"{title}\nflagged: {', '.join(flagged) or 'none'}", fontsize=9)
    fig.tight_layout()
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix[1:])
    plt.close(fig)
