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
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix[1:], bbox_inches="tight")
    plt.close(fig)


# -- sample level ---------------------------------------------------------------------------------
# Every sample-level figure draws a tidy table written by a stage (poisondetect.sample_level's
# analyse_filtering / analyse_scores); nothing is computed here.
_DETECTOR_LABEL = {
    "cae_plus": "CAE+",
    "cae": "CAE",
    "rae": "RAE",
    "od": "OD",
    "magnet": "MagNet",
    "magnet_reformer": "MagNet+reformer",
    "spectral_signatures": "Spectral signatures",
    "activation_clustering": "Activation clustering",
    "none": "no defence",
    "clean_data": "clean data",
}
_AXIS_LABEL = {
    ("cae_plus", "re"): "RE of the RAE (L1)",
    ("cae_plus", "ce"): "CE of the CAE",
    ("cae", "re"): "RE of the CAE (L1)",
    ("cae", "ce"): "CE of the CAE",
}


def _label(detector) -> str:
    return _DETECTOR_LABEL.get(detector, detector)


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["detector"] = df["detector"].map(_label)
    return df


def _themed_table(csv: str, context: str):
    """seaborn themed for a figure (Agg backend) and the analysis table, detectors labelled."""
    import seaborn as sns

    _plt()
    sns.set_theme(context=context, style="whitegrid")
    return sns, _labelled(pd.read_csv(csv))


def _save(fig, png: str, pdf: str, dpi: int) -> None:
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix[1:], bbox_inches="tight")
    _plt().close(fig)


def sample_level_tables(filtering_csv: str, task: str, out: dict[str, str]) -> None:
    """F1 (the detector's decision) and retrained-SVM accuracy by detector x attack and poisons."""
    df = pd.read_csv(filtering_csv)
    keep = (
        (df["task"] == task)
        & df["decision"].isin(["gmm", "none"])
        & df["train_on"].isin(["contaminated", "none"])
    )
    df = _labelled(df[keep])
    f1 = df[df["detector"] != "no defence"].pivot_table(
        index="detector", columns=["attack", "n_poison"], values="f1", aggfunc="mean"
    )
    write_table(
        f1.round(3),
        out["f1_csv"],
        out["f1_tex"],
        f"F1 of the poison filters (GMM decision), task {task}, by attack and poisons per "
        "round (mean over the evaluation rounds and seeds).",
        f"tab:f1-{task}",
    )
    acc = (
        df.pivot_table(
            index="detector", columns=["attack", "n_poison"], values="svm_accuracy", aggfunc="mean"
        )
        * 100
    )
    clean = df.groupby(["attack", "n_poison"])["clean_accuracy"].mean() * 100
    acc.loc["clean data"] = clean
    write_table(
        acc.round(2),
        out["acc_csv"],
        out["acc_tex"],
        f"Test accuracy (\\%) of the SVM retrained on the filtered training set, task {task}; "
        "'no defence' keeps every point, 'clean data' has no poisons.",
        f"tab:acc-{task}",
    )


def sample_level_detector_figures(
    tables: dict[str, str],
    task: str,
    out: dict[str, str],
    *,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Figs. 2-5 of the paper from the analysis tables ``scatter``, ``f1_vs_k``, ``sweep`` and
    ``ablation`` (paths in ``tables``)."""
    import seaborn as sns

    plt = _plt()
    sns.set_theme(context=context, style="whitegrid")

    # Fig. 2: the two sub-scores of every evaluation point, poisons highlighted
    pts = pd.read_csv(tables["scatter"])
    x_col, y_col = pts.columns[6], pts.columns[7]
    cells = list(dict.fromkeys(zip(pts["attack"], pts["n_poison"], strict=True)))
    fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 3.2), squeeze=False)
    for ax, (attack, n) in zip(axes[0], cells, strict=True):
        d = pts[(pts["attack"] == attack) & (pts["n_poison"] == n)]
        det = d["detector"].iloc[0]
        sns.scatterplot(
            d,
            x=x_col,
            y=y_col,
            hue="is_poison",
            palette=palette,
            s=12,
            ax=ax,
            hue_order=[False, True],
            legend=ax is axes[0][0],
        )
        ax.set(
            title=f"{attack} ({n} poisons/round)",
            xlabel=_AXIS_LABEL.get((det, x_col), x_col),
            ylabel=_AXIS_LABEL.get((det, y_col), y_col),
        )
    fig.tight_layout()
    _save(fig, out["fig2_png"], out["fig2_pdf"], dpi)

    # Fig. 3: F1 vs K (top-K decision on the detector's score)
    curve = pd.read_csv(tables["f1_vs_k"])
    name = _label(curve["detector"].iloc[0])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(curve, x="K", y="F1", hue="attack", marker="o", palette=palette, ax=ax)
    ax.set(title=f"{name} top-K filtering, task {task}", xlabel="K (points removed per round)")
    fig.tight_layout()
    _save(fig, out["fig3_png"], out["fig3_pdf"], dpi)

    # Fig. 4: F1 vs a scoring parameter (GMM decision), the configured value marked
    sweep = pd.read_csv(tables["sweep"])
    param = sweep["param"].iloc[0]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(
        sweep.rename(columns={"value": param}),
        x=param,
        y="F1",
        hue="attack",
        marker="o",
        palette=palette,
        ax=ax,
    )
    ax.axvline(sweep.loc[sweep["current"], "value"].iloc[0], color="grey", linestyle="--")
    ax.set(title=f"{_label(sweep['detector'].iloc[0])} F1 vs {param} (GMM), task {task}")
    fig.tight_layout()
    _save(fig, out["fig4_png"], out["fig4_pdf"], dpi)

    # Fig. 5: ablation (F1, GMM decision), detectors in the table's (the configured) order
    abl = pd.read_csv(tables["ablation"])
    order = [_label(d) for d in dict.fromkeys(abl["detector"])]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sns.barplot(
        _labelled(abl),
        x="attack",
        y="F1",
        hue="detector",
        hue_order=order,
        palette=palette,
        ax=ax,
    )
    ax.set(title=f"Ablation, task {task}", ylim=(0, 1.05))
    fig.tight_layout()
    _save(fig, out["fig5_png"], out["fig5_pdf"], dpi)


def sample_level_accuracy_figure(
    accuracy_csv: str,
    task: str,
    png: str,
    pdf: str,
    *,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Fig. 6: accuracy of the retrained SVM vs poison rate, per attack (panels) and detector."""
    sns, d = _themed_table(accuracy_csv, context)
    d = d.rename(columns={"poison_pct": "poison %"})
    g = sns.relplot(
        d,
        x="poison %",
        y="svm_accuracy",
        hue="detector",
        col="attack",
        kind="line",
        marker="o",
        palette=palette,
        height=3,
        aspect=1.0,
        facet_kws={"sharey": True},
    )
    g.set_axis_labels("poisons per 100 training points", "SVM test accuracy")
    g.figure.suptitle(f"Retrained SVM after filtering, task {task}", y=1.02)
    _save(g.figure, png, pdf, dpi)


def sample_level_clean_vs_contaminated(
    clean_vs_contaminated_csv: str,
    task: str,
    png: str,
    pdf: str,
    *,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Fig. 7: F1 of detectors trained on clean vs contaminated data."""
    sns, df = _themed_table(clean_vs_contaminated_csv, context)
    g = sns.catplot(
        df,
        x="detector",
        y="f1",
        hue="train_on",
        col="attack",
        kind="bar",
        palette=palette,
        height=3,
        aspect=1.2,
        errorbar=None,
    )
    g.set_axis_labels("", "F1 (GMM decision)")
    g.set_xticklabels(rotation=45, ha="right")
    g.figure.suptitle(f"Detectors trained on clean vs contaminated data, task {task}", y=1.02)
    _save(g.figure, png, pdf, dpi)
