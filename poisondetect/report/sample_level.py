"""Sample-level tables (F1, retrained-SVM accuracy) and the paper's Figs. 2-7. Every figure draws
a tidy table written by a stage (``poisondetect.sample_level.analyses``); nothing is computed
here."""

from __future__ import annotations

import pandas as pd

from poisondetect.report.common import (
    detector_label,
    labelled,
    latex_escape,
    plt,
    save,
    series_styles,
    themed_table,
    write_table,
)

_AXIS_LABEL = {
    ("cae_plus", "re"): "RE of the RAE (L1)",
    ("cae_plus", "ce"): "CE of the CAE",
    ("cae", "re"): "RE of the CAE (L1)",
    ("cae", "ce"): "CE of the CAE",
}


def sample_level_tables(filtering_csv: str, task: str, out: dict[str, str]) -> None:
    """F1 (the detector's decision) and retrained-SVM accuracy by detector x attack and poisons."""
    df = pd.read_csv(filtering_csv)
    keep = (
        (df["task"] == task)
        & df["decision"].isin(["own", "none"])
        & df["train_on"].isin(["contaminated", "none"])
    )
    df = labelled(df[keep])
    f1 = df[df["detector"] != "no defence"].pivot_table(
        index="detector", columns=["attack", "n_poison"], values="f1", aggfunc="mean"
    )
    write_table(
        f1.round(3),
        out["f1_csv"],
        out["f1_tex"],
        f"F1 of the poison filters (the detector's own decision), task {latex_escape(task)}, by attack and poisons per "
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
        f"Test accuracy (\\%) of the SVM retrained on the filtered training set, task {latex_escape(task)}; "
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

    pyplot = plt()
    sns.set_theme(context=context, style="whitegrid")
    for draw in (_fig2, _fig3, _fig4, _fig5):
        draw(tables, task, out, sns=sns, pyplot=pyplot, dpi=dpi, palette=palette)


def _fig2(tables: dict, task: str, out: dict, *, sns, pyplot, dpi: int, palette: str) -> None:
    """Fig. 2: the two sub-scores of every evaluation point, poisons highlighted."""
    pts = pd.read_csv(tables["scatter"])
    x_col, y_col = pts.columns[6], pts.columns[7]
    cells = list(dict.fromkeys(zip(pts["attack"], pts["n_poison"], strict=True)))
    fig, axes = pyplot.subplots(1, len(cells), figsize=(3.2 * len(cells), 3.2), squeeze=False)
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
    save(fig, out["fig2_png"], out["fig2_pdf"], dpi)


def _fig3(tables: dict, task: str, out: dict, *, sns, pyplot, dpi: int, palette: str) -> None:
    """Fig. 3: F1 vs K (top-K decision on the detector's score)."""
    curve = pd.read_csv(tables["f1_vs_k"])
    name = detector_label(curve["detector"].iloc[0])
    fig, ax = pyplot.subplots(figsize=(5, 3.5))
    sns.lineplot(curve, x="K", y="F1", hue="attack", marker="o", palette=palette, ax=ax)
    ax.set(title=f"{name} top-K filtering, task {task}", xlabel="K (points removed per round)")
    fig.tight_layout()
    save(fig, out["fig3_png"], out["fig3_pdf"], dpi)


def _fig4(tables: dict, task: str, out: dict, *, sns, pyplot, dpi: int, palette: str) -> None:
    """Fig. 4: F1 vs a scoring parameter (the detector's own decision), the configured value marked."""
    sweep = pd.read_csv(tables["sweep"])
    param = sweep["param"].iloc[0]
    fig, ax = pyplot.subplots(figsize=(5, 3.5))
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
    ax.set(
        title=f"{detector_label(sweep['detector'].iloc[0])} F1 vs {param} (own decision), task {task}"
    )
    fig.tight_layout()
    save(fig, out["fig4_png"], out["fig4_pdf"], dpi)


def _fig5(tables: dict, task: str, out: dict, *, sns, pyplot, dpi: int, palette: str) -> None:
    """Fig. 5: ablation (F1, the detector's own decision), detectors in the table's (the configured) order."""
    abl = pd.read_csv(tables["ablation"])
    order = [detector_label(d) for d in dict.fromkeys(abl["detector"])]
    fig, ax = pyplot.subplots(figsize=(5.5, 3.5))
    sns.barplot(
        labelled(abl),
        x="attack",
        y="F1",
        hue="detector",
        hue_order=order,
        palette=palette,
        ax=ax,
    )
    ax.set(title=f"Ablation, task {task}", ylim=(0, 1.05))
    fig.tight_layout()
    save(fig, out["fig5_png"], out["fig5_pdf"], dpi)


# Figs. 6 and 7: one faceted seaborn plot per analysis table (panels per attack; Fig. 6 a row per
# measure: the retrained SVM's accuracy and the detector's F1, against the poison rate)
_SUMMARY_FIGURES = {
    "accuracy": {
        "plot": "relplot",
        "measures": {"svm_accuracy": "SVM test accuracy", "f1": "F1 (own decision)"},
        "kw": {
            "x": "poison %",
            "y": "value",
            "hue": "detector",
            "style": "detector",  # its own marker and dashes: coinciding lines stay apart
            "markers": True,
            "dashes": True,
            "kind": "line",
            "aspect": 1.0,
            "alpha": 0.85,
            "row": "measure",
            "facet_kws": {"sharey": "row"},
        },
        "axes": ("poisons per 100 training points", ""),
        "title": "Retrained SVM and F1 against the poison rate",
    },
    "clean_vs_contaminated": {
        "plot": "catplot",
        "kw": {
            "x": "detector",
            "y": "f1",
            "hue": "train_on",
            "kind": "bar",
            "errorbar": None,
            "aspect": 1.2,
        },
        "axes": ("", "F1 (the detector's own decision)"),
        "title": "Detectors trained on clean vs contaminated data",
    },
}


def sample_level_summary_figure(
    table_csv: str,
    task: str,
    png: str,
    pdf: str,
    *,
    figure: str,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Fig. 6 (``figure="accuracy"``: the retrained SVM's accuracy and each detector's F1 against
    the poison rate, per attack, with no defence and clean data for reference) or Fig. 7
    (``"clean_vs_contaminated"``: F1 of detectors trained on clean vs contaminated data), one
    panel per attack."""
    spec = _SUMMARY_FIGURES[figure]
    sns, d = themed_table(table_csv, context)
    d = d.rename(columns={"poison_pct": "poison %"})
    if "measures" in spec:  # long format: one row of panels per measure
        d = d.melt(
            id_vars=[c for c in d.columns if c not in spec["measures"]],
            value_vars=list(spec["measures"]),
            var_name="measure",
        )
        d["measure"] = d["measure"].map(spec["measures"])
        d = d.dropna(subset=["value"])
    kw = dict(spec["kw"])
    if kw.get("hue") == "detector":  # a colour-blind-safe palette of enough colours
        styles = series_styles(d["detector"].unique(), palette)
        kw["palette"] = [styles[n]["color"] for n in d["detector"].unique()]
    else:
        kw["palette"] = palette
    g = getattr(sns, spec["plot"])(d, col="attack", height=3, **kw)
    g.set_axis_labels(*spec["axes"])
    if "measures" in spec:
        g.set_titles(row_template="{row_name}", col_template="{col_name}")
        for ax, measure in zip(g.axes[:, 0], g.row_names, strict=True):
            ax.set_ylabel(measure)
    if spec["plot"] == "catplot":
        g.set_xticklabels(rotation=45, ha="right")
    g.figure.suptitle(f"{spec['title']}, task {task}", y=1.02)
    save(g.figure, png, pdf, dpi)
