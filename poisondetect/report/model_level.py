"""Model-level tables (the paper's Tables 1-3, the ROC table) and figures (Fig. 5 with
populations, ROC curves, AUROC heatmap)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisondetect.population import ModelSpec, population_label
from poisondetect.report.common import CELL, plt, save, write_table


def _column(row) -> str:
    """Column label of a model's population: Genuine, Honest <variant>, FA 50% e10, PAA 5% e5."""
    fraction, epochs = row.get("fraction"), row.get("epochs")
    spec = ModelSpec(
        "",
        row["role"],
        variant=row.get("variant"),
        attack=row.get("attack"),
        fraction=None if pd.isna(fraction) else float(fraction),
        epochs=None if pd.isna(epochs) else int(epochs),
    )
    return population_label(spec)


def _attack_label(kind: str, fraction: float, epochs: int) -> str:
    return population_label(
        ModelSpec("", "attack", attack=kind, fraction=fraction, epochs=int(epochs))
    )


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
        index=CELL, columns="column", values=value, aggfunc=aggfunc, dropna=False, sort=False
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
    df = df[df["split"] != "shadow"]  # shadow attacks fit learned detectors; they are not evaluated
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
    if "paper_flagged" in df:
        d = df[df["role"] != "genuine"]
        t3 = _pivot(d, "paper_flagged", lambda f: f"{int(f.sum())}/{len(f)}")
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
    roc = roc[roc["attacks"] == "all"]  # every attacked model (the effective ones: in roc.csv)
    r = roc[roc["honest_variant"] == "all"].copy()
    r["attack"] = [
        _attack_label(k, f, e)
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

    pyplot = plt()
    df = pd.read_parquet(errors_parquet, columns=["model", "error"])
    det = pd.read_csv(detection_csv)
    det["population"] = det.apply(_column, axis=1)
    df = df.merge(det[["model", "population"]], on="model")
    order = _order(df["population"].unique())
    sns.set_theme(context=context, style="whitegrid")
    fig, ax = pyplot.subplots(figsize=(7.5, 4.2))
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
    if "paper_threshold" in det:
        threshold = float(det["paper_threshold"].iloc[0])
        ax.axvline(threshold, color="red", linestyle="--", linewidth=1.5)
        ax.text(threshold, ax.get_ylim()[1] * 0.95, " $T_r$", color="red", va="top")
        rate = (
            det[det["role"] != "genuine"]
            .groupby("population")["paper_flagged"]
            .agg(["sum", "size"])
        )
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
    save(fig, png, pdf, dpi)


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

    pyplot = plt()
    sel = {"dataset": dataset, "arch": arch, "scenario": scenario}
    roc = pd.read_csv(roc_csv)
    roc = roc[
        (roc[list(sel)] == pd.Series(sel)).all(axis=1)
        & (roc["honest_variant"] == "all")
        & (roc["attacks"] == "all")
    ]
    curves = pd.read_csv(curves_csv)
    curves = curves[
        (curves[list(sel)] == pd.Series(sel)).all(axis=1) & (curves["attacks"] == "all")
    ]
    for d in (roc, curves):
        d["population"] = [
            _attack_label(k, f, e)
            for k, f, e in zip(d["attack"], d["fraction"], d["epochs"], strict=True)
        ]
    pops = _order(roc["population"].unique())
    main = [d for d in roc["detector"].unique() if ":" not in d]
    sns.set_theme(context=context, style="whitegrid")
    ncol = min(4, len(pops))
    nrow = -(-len(pops) // ncol)
    fig, axes = pyplot.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
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
    save(fig, out["roc_png"], out["roc_pdf"], dpi)

    heat = roc.pivot_table(index="detector", columns="population", values="auroc", sort=False)
    heat = heat[pops]
    fig, ax = pyplot.subplots(figsize=(1.1 * len(pops) + 3, 0.35 * len(heat) + 1.5))
    sns.heatmap(heat, annot=True, fmt=".2f", vmin=0.5, vmax=1.0, cmap="viridis", ax=ax)
    ax.set_title(f"AUROC, {title}", fontsize=9)
    ax.set_xlabel("attack population (kind, share of the target class, epochs)")
    save(fig, out["auroc_png"], out["auroc_pdf"], dpi)


def model_level_success_figure(
    scores_csv: str,
    detection_csv: str,
    png: str,
    pdf: str,
    *,
    dataset: str,
    arch: str,
    scenario: str,
    title: str,
    min_success: float,
    dpi: int = 150,
    palette: str = "colorblind",
    context: str = "paper",
) -> None:
    """Does a detector catch the attacks that work? One panel per detector: each attacked model's
    score (as its margin over its cell's calibrated threshold, 0 = the threshold) against its
    held-out attack success, the honest models' margins beside them, the effective-attack line."""
    import seaborn as sns

    sel = {"dataset": dataset, "arch": arch, "scenario": scenario}
    scores = pd.read_csv(scores_csv)
    det = pd.read_csv(detection_csv)
    keys = ["dataset", "arch", "scenario", "seed", "model"]
    df = scores[
        (scores[list(sel)] == pd.Series(sel)).all(axis=1) & (scores["statistic"] == "score")
    ]
    df = df[df["split"].isin(["fit", "heldout", "attack"])].merge(
        det[[*keys, "attack_success_test"]], on=keys, how="left"
    )
    df["margin"] = df["value"] - df["calibrated_threshold"]
    df["population"] = [
        "honest" if r == "honest" else _attack_label(k, f, e)
        for r, k, f, e in zip(df["role"], df["attack"], df["fraction"], df["epochs"], strict=True)
    ]
    pops = ["honest", *_order([p for p in df["population"].unique() if p != "honest"])]
    detectors = list(dict.fromkeys(df["detector"]))
    sns.set_theme(context=context, style="whitegrid")
    ncol = min(4, len(detectors))
    nrow = -(-len(detectors) // ncol)
    pyplot = plt()
    fig, axes = pyplot.subplots(nrow, ncol, figsize=(3.3 * ncol, 2.9 * nrow), squeeze=False)
    colors = dict(zip(pops, sns.color_palette(palette, len(pops)), strict=True))
    rng = np.random.default_rng(0)  # jitter of the honest strip (no data in it)
    for ax, name in zip(axes.flat, detectors, strict=False):
        d = df[df["detector"] == name]
        h = d[d["population"] == "honest"]
        ax.scatter(
            -0.12 + rng.uniform(-0.04, 0.04, len(h)), h["margin"], s=10, color=colors["honest"]
        )
        for pop in pops[1:]:
            a = d[d["population"] == pop]
            ax.scatter(a["attack_success_test"], a["margin"], s=14, color=colors[pop], label=pop)
        ax.axhline(0, color="red", linestyle="--", linewidth=1)
        ax.axvline(min_success, color="grey", linestyle=":", linewidth=1)
        ax.set_title(name, fontsize=8)
        ax.set_xlim(-0.2, 1.02)
        ax.set_xlabel("held-out attack success (honest: left)", fontsize=7)
        ax.set_ylabel("score - calibrated threshold", fontsize=7)
    for ax in list(axes.flat)[len(detectors) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(6, len(labels)),
        fontsize=7,
        bbox_to_anchor=(0.5, -0.02),
    )
    fig.suptitle(
        f"{title}: does each detector catch the attacks that work? (effective: success >= "
        f"{min_success:g}, dotted; threshold: dashed)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    save(fig, png, pdf, dpi)
