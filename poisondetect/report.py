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
_DETECTOR_LABEL = {
    "cae_plus": "CAE+",
    "cae": "CAE",
    "rae": "RAE",
    "od": "OD",
    "magnet": "MagNet",
    "magnet_reformer": "MagNet+reformer",
    "none": "no defence",
}


def _save(fig, png: str, pdf: str, dpi: int) -> None:
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix[1:], bbox_inches="tight")
    _plt().close(fig)


def _task_rows(filtering_csv: str, task: str, *, contaminated_only: bool = True) -> pd.DataFrame:
    """Rows of one task with the GMM decision (and the no-defence rows), detectors by display name;
    ``contaminated_only`` drops the detectors trained on clean data."""
    df = pd.read_csv(filtering_csv)
    keep = (df["task"] == task) & df["decision"].isin(["gmm", "none"])
    if contaminated_only:
        keep &= df["train_on"].isin(["contaminated", "none"])
    df = df[keep].copy()
    df["detector"] = df["detector"].map(_DETECTOR_LABEL).fillna(df["detector"])
    return df


def sample_level_tables(filtering_csv: str, task: str, out: dict[str, str]) -> None:
    """F1 (GMM decision) and retrained-SVM accuracy by detector x attack and poison count."""
    df = _task_rows(filtering_csv, task)
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


def sample_level_cae_figures(
    scores: dict[tuple[str, int], str],
    task: str,
    alpha: float,
    alpha_grid: list[float],
    out: dict[str, str],
    *,
    seed: int = 0,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Figs. 2-5 of the paper from the stored per-point scores of the CAE family.

    ``scores`` maps (attack, n_poison) to a ``cae_contaminated.parquet`` (largest poison count used).
    """
    import seaborn as sns

    from poisondetect.detectors.cae import combine
    from poisondetect.detectors.decision import gmm_decision, top_k_decision
    from poisondetect.metrics import filter_metrics

    plt = _plt()
    sns.set_theme(context=context, style="whitegrid")
    frames = {key: pd.read_parquet(p) for key, p in scores.items()}
    attacks = [a for a, _ in scores]

    # Fig. 2: RE (RAE) vs CE (CAE) of every evaluation point, poisons highlighted
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 3.2), squeeze=False)
    for ax, ((attack, n), df) in zip(axes[0], frames.items(), strict=True):
        d = df[df["detector"] == "cae_plus"]
        sns.scatterplot(
            d,
            x="re",
            y="ce",
            hue="is_poison",
            palette=palette,
            s=12,
            ax=ax,
            hue_order=[False, True],
            legend=ax is axes[0][0],
        )
        ax.set(
            title=f"{attack} ({n} poisons/round)",
            xlabel="RE of the RAE (L1)",
            ylabel="CE of the CAE",
        )
    fig.tight_layout()
    _save(fig, out["fig2_png"], out["fig2_pdf"], dpi)

    # Fig. 3: F1 vs K (top-K decision on the CAE+ score)
    rows = []
    for (attack, n), df in frames.items():
        d = df[df["detector"] == "cae_plus"]
        for k in range(0, 2 * max(n, 1) + 1):
            f1s = [
                filter_metrics(g["is_poison"].to_numpy(), top_k_decision(g["score"].to_numpy(), k))[
                    "f1"
                ]
                for _, g in d.groupby("round")
            ]
            rows.append({"attack": attack, "K": k, "F1": float(np.mean(f1s))})
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(
        pd.DataFrame(rows), x="K", y="F1", hue="attack", marker="o", palette=palette, ax=ax
    )
    ax.set(title=f"CAE+ top-K filtering, task {task}", xlabel="K (points removed per round)")
    fig.tight_layout()
    _save(fig, out["fig3_png"], out["fig3_pdf"], dpi)

    # Fig. 4: F1 vs alpha (GMM decision), recomputed from the stored RE and CE terms
    rows = []
    for (attack, _n), df in frames.items():
        d = df[df["detector"] == "cae_plus"]
        for a in sorted(set(alpha_grid) | {alpha}):
            f1s = []
            for _, g in d.groupby("round"):
                s = combine(g["re"].to_numpy(), g["ce"].to_numpy(), a)
                f1s.append(
                    filter_metrics(g["is_poison"].to_numpy(), gmm_decision(s, seed=seed))["f1"]
                )
            rows.append({"attack": attack, "alpha": a, "F1": float(np.mean(f1s))})
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(
        pd.DataFrame(rows), x="alpha", y="F1", hue="attack", marker="o", palette=palette, ax=ax
    )
    ax.axvline(alpha, color="grey", linestyle="--")
    ax.set(title=f"CAE+ F1 vs alpha (GMM), task {task}")
    fig.tight_layout()
    _save(fig, out["fig4_png"], out["fig4_pdf"], dpi)

    # Fig. 5: ablation RAE / CAE / CAE+ (F1, GMM decision)
    rows = []
    for (attack, _n), df in frames.items():
        for det, d in df.groupby("detector"):
            f1s = [
                filter_metrics(
                    g["is_poison"].to_numpy(), gmm_decision(g["score"].to_numpy(), seed=seed)
                )["f1"]
                for _, g in d.groupby("round")
            ]
            rows.append(
                {"attack": attack, "detector": _DETECTOR_LABEL[det], "F1": float(np.mean(f1s))}
            )
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sns.barplot(
        pd.DataFrame(rows),
        x="attack",
        y="F1",
        hue="detector",
        hue_order=["RAE", "CAE", "CAE+"],
        palette=palette,
        ax=ax,
    )
    ax.set(title=f"Ablation, task {task}", ylim=(0, 1.05))
    fig.tight_layout()
    _save(fig, out["fig5_png"], out["fig5_pdf"], dpi)


def sample_level_accuracy_figure(
    filtering_csv: str,
    task: str,
    png: str,
    pdf: str,
    *,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Fig. 6: accuracy of the retrained SVM vs poison rate, per attack (panels) and detector."""
    import seaborn as sns

    _plt()  # the Agg backend
    sns.set_theme(context=context, style="whitegrid")
    df = _task_rows(filtering_csv, task)
    df["poison %"] = df["poison_rate"] * 100
    clean = df.groupby(["attack", "poison %"], as_index=False)["clean_accuracy"].mean()
    clean["detector"], clean["svm_accuracy"] = "clean data", clean["clean_accuracy"]
    d = pd.concat([df, clean], ignore_index=True)
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
    filtering_csv: str,
    task: str,
    png: str,
    pdf: str,
    *,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Fig. 7: F1 of detectors trained on clean vs contaminated data."""
    import seaborn as sns

    _plt()  # the Agg backend
    sns.set_theme(context=context, style="whitegrid")
    df = _task_rows(filtering_csv, task, contaminated_only=False)
    df = df[df["decision"] == "gmm"]
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
