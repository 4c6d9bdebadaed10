"""Tables (CSV + LaTeX booktabs) and seaborn figures (PNG + PDF) for both parts of the workflow."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from poisondetect.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

_CELL = ["dataset", "arch", "scenario", "seed"]
_ATTACK_LABEL = {"flip": "FA", "pattern": "PAA"}


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
    """Column label of a population: Genuine, Honest <variant>, FA 50% e10, PAA 5% e5."""
    if row["role"] == "genuine":
        return "Genuine"
    if row["role"] == "honest":
        return f"Honest {row['variant']}"
    return f"{_ATTACK_LABEL[row['variant']]} {row['fraction'] * 100:g}% e{int(row['epochs'])}"


def _order(cols) -> list[str]:
    rank = {"Genuine": 0, "Honest": 1, "FA": 2, "PAA": 3}

    def key(c):
        name, _, rest = c.partition(" ")
        pct, _, ep = rest.partition("% e")
        num = (float(pct), int(ep)) if ep.isdigit() else (0.0, 0)
        return (rank.get(name, 9), num, rest)

    return sorted(cols, key=key)


def _pivot(df: pd.DataFrame, value: str, aggfunc) -> pd.DataFrame:
    d = df.copy()
    d["column"] = d.apply(_column, axis=1)
    t = d.pivot_table(
        index=_CELL, columns="column", values=value, aggfunc=aggfunc, dropna=False, sort=False
    )
    return t[_order(t.columns)]


def _mean_sd(values: pd.Series) -> str:
    v = values.dropna() * 100
    if not len(v):
        return ""
    return f"{v.mean():.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def model_level_tables(detection_csv: str, roc_csv: str, out: dict[str, str]) -> None:
    """The paper's Tables 1-3 over the populations, and the ROC table of every detector.

    ``out`` maps table1_csv, table1_tex, ..., roc_csv, roc_tex to paths.
    """
    df = pd.read_csv(detection_csv)
    write_table(
        _pivot(df, "accuracy", _mean_sd),
        out["table1_csv"],
        out["table1_tex"],
        "Test accuracy (\\%, mean ± standard deviation over the replicates) of the genuine "
        "model, the honest fine-tunes (by variant) and the attacked ones (FA = flipping, PAA = "
        "pattern addition; share of the target class attacked; fine-tune epochs).",
        "tab:accuracy",
    )
    attacks = df[df["role"] == "attack"]
    write_table(
        _pivot(attacks, "attack_success", _mean_sd),
        out["table2_csv"],
        out["table2_tex"],
        "Attack success (\\%, mean ± standard deviation over the replicates): share of the "
        "attacked training images classified as the attacker's class.",
        "tab:attack-success",
    )
    if "flagged" in df:
        d = df[df["role"] != "genuine"]
        t3 = _pivot(d, "flagged", lambda f: f"{int(f.sum())}/{len(f)}")
        write_table(
            t3,
            out["table3_csv"],
            out["table3_tex"],
            "Detection with the paper's rule: models flagged poisoned (of the replicates) when "
            "the mean reconstruction error of their activations on the trigger set exceeds $T_r "
            "= \\mu + \\sigma$ of one honest fine-tune's errors.",
            "tab:detection",
        )
    roc = pd.read_csv(roc_csv)
    r = roc[roc["honest_variant"] == "all"].copy()
    r["attack"] = [
        f"{_ATTACK_LABEL[k]} {f * 100:g}% e{e}"
        for k, f, e in zip(r["attack"], r["fraction"], r["epochs"], strict=True)
    ]
    r["cell"] = [
        f"{a:.2f} [{lo:.2f}, {hi:.2f}] / {t:.2f}"
        for a, lo, hi, t in zip(
            r["auroc"], r["auroc_lo"], r["auroc_hi"], r["tpr_at_fpr"], strict=True
        )
    ]
    t = r.pivot_table(
        index=["dataset", "arch", "scenario", "detector"],
        columns="attack",
        values="cell",
        aggfunc="first",
        sort=False,
    )
    n = roc[roc["honest_variant"] == "all"][["n_honest", "n_attacked"]]
    write_table(
        t[_order(t.columns)],
        out["roc_csv"],
        out["roc_tex"],
        "Every detector against every attack population: AUROC [bootstrap interval] / detection "
        f"rate at a {roc['fpr'].iloc[0] * 100:g}\\% false-alarm rate, against all honest fine-tunes "
        f"({int(n['n_honest'].min())}-{int(n['n_honest'].max())} honest, "
        f"{int(n['n_attacked'].min())}-{int(n['n_attacked'].max())} attacked models per cell).",
        "tab:roc",
    )


def model_level_figure(
    errors_parquet: str,
    detection_csv: str,
    png: str,
    pdf: str,
    title: str,
    *,
    bins: int = 50,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Fig. 5 with populations: histograms of per-image reconstruction errors of the genuine model,
    of each honest variant's replicates (pooled) and of each attack population, with the paper's
    threshold Tr."""
    import seaborn as sns

    plt = _plt()
    df = pd.read_parquet(errors_parquet, columns=["model", "error"])
    det = pd.read_csv(detection_csv)
    det["population"] = det.apply(_column, axis=1)
    df = df.merge(det[["model", "population"]], on="model")
    order = _order(df["population"].unique())
    sns.set_theme(context=context, style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    lo, hi = df["error"].clip(lower=1e-12).min(), df["error"].max()
    edges = np.geomspace(lo, hi, bins + 1) if hi > lo else bins
    sns.histplot(
        df,
        x="error",
        hue="population",
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
    if "threshold" in det:
        threshold = float(det["threshold"].iloc[0])
        ax.axvline(threshold, color="red", linestyle="--", linewidth=1.5)
        ax.text(threshold, ax.get_ylim()[1] * 0.95, " $T_r$", color="red", va="top")
        rate = det[det["role"] != "genuine"].groupby("population")["flagged"].agg(["sum", "size"])
        flagged = ", ".join(
            f"{p} {int(rate.loc[p, 'sum'])}/{int(rate.loc[p, 'size'])}"
            for p in order
            if p in rate.index
        )
        title = f"{title}\nflagged by the paper's rule: {flagged}"
    n = det.groupby("population").size()
    ax.set_xlabel(
        "auto-encoder reconstruction error (MSE) per trigger image; models per population: "
        + ", ".join(f"{n[p]}" for p in order)
    )
    ax.set_title(title, fontsize=8)
    _save(fig, png, pdf, dpi)


def model_level_roc_figures(
    roc_csv: str,
    curves_csv: str,
    out: dict[str, str],
    *,
    dataset: str,
    arch: str,
    scenario: str,
    title: str,
    fpr: float = 0.05,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """ROC curves of the main detectors (one panel per attack population, all honest fine-tunes
    as negatives) and a heatmap of AUROC over detector x attack population."""
    import seaborn as sns

    plt = _plt()
    sel = {"dataset": dataset, "arch": arch, "scenario": scenario}
    roc = pd.read_csv(roc_csv)
    roc = roc[(roc[list(sel)] == pd.Series(sel)).all(axis=1) & (roc["honest_variant"] == "all")]
    curves = pd.read_csv(curves_csv)
    curves = curves[(curves[list(sel)] == pd.Series(sel)).all(axis=1)]
    for d in (roc, curves):
        d["population"] = [
            f"{_ATTACK_LABEL[k]} {f * 100:g}% e{e}"
            for k, f, e in zip(d["attack"], d["fraction"], d["epochs"], strict=True)
        ]
    pops = _order(roc["population"].unique())
    main = [d for d in roc["detector"].unique() if ":" not in d]
    sns.set_theme(context=context, style="whitegrid")
    ncol = min(4, len(pops))
    nrow = -(-len(pops) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    colors = dict(zip(main, sns.color_palette(palette, len(main)), strict=True))
    for ax, pop in zip(axes.flat, pops, strict=False):
        c = curves[curves["population"] == pop]
        for det in main:
            p = c[c["detector"] == det]
            a = roc.loc[(roc["population"] == pop) & (roc["detector"] == det), "auroc"].iloc[0]
            ax.plot(
                p["fpr"],
                p["tpr"],
                drawstyle="steps-post",
                color=colors[det],
                label=f"{det} ({a:.2f})",
            )
        ax.axvline(fpr, color="grey", linestyle=":", linewidth=1)
        ax.set_title(pop, fontsize=8)
        ax.set_xlabel("false-alarm rate")
        ax.set_ylabel("detection rate")
        ax.legend(fontsize=5, loc="lower right")
    for ax in list(axes.flat)[len(pops) :]:
        ax.axis("off")
    n = roc[["n_honest", "n_attacked"]]
    fig.suptitle(
        f"{title}: {int(n['n_honest'].max())} honest vs "
        f"{int(n['n_attacked'].min())}-{int(n['n_attacked'].max())} attacked models",
        fontsize=9,
    )
    _save(fig, out["roc_png"], out["roc_pdf"], dpi)

    heat = roc.pivot_table(index="detector", columns="population", values="auroc", sort=False)
    heat = heat[pops]
    fig, ax = plt.subplots(figsize=(1.1 * len(pops) + 3, 0.35 * len(heat) + 1.5))
    sns.heatmap(heat, annot=True, fmt=".2f", vmin=0.5, vmax=1.0, cmap="viridis", ax=ax)
    ax.set_title(f"AUROC, {title}", fontsize=9)
    ax.set_xlabel("attack population (kind, share of the target class, epochs)")
    _save(fig, out["auroc_png"], out["auroc_pdf"], dpi)


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
