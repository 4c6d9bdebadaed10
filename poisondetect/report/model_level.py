"""Model-level tables (the paper's Tables 1-3, the ROC table) and figures (Fig. 5 with
populations, ROC curves, AUROC heatmap)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisondetect.model_level.calibration import success_gain
from poisondetect.population import ModelSpec, parse_model, population_label
from poisondetect.report.common import CELL, plt, save, series_styles, write_table


def _column(row) -> str:
    """Column label of a model's population: Genuine, Honest <variant>, FA 50% e10, PAA 5% e5
    (from the model's name where the row has one: an attacker that drew its recipe trained other
    epochs than its population's name says)."""
    if isinstance(row.get("model"), str):
        return population_label(parse_model(row["model"]))
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


def _populations(roc: pd.DataFrame) -> pd.DataFrame:
    """roc.csv's rows per attack population (not its per-family rows, scope family)."""
    return roc[roc["scope"] == "population"] if "scope" in roc else roc


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
    roc = _populations(pd.read_csv(roc_csv))
    r = roc[roc["honest_variant"] == "all"].copy()
    r["population"] = [
        f"{_attack_label(k, f, e)} ({subset})"
        for k, f, e, subset in zip(
            r["attack"], r["fraction"], r["epochs"], r["attacks"], strict=True
        )
    ]
    r["cell"] = [
        f"{a:.2f} [{lo:.2f}, {hi:.2f}] / {t:.2f}" if n else "no attack"
        for a, lo, hi, t, n in zip(
            r["auroc"], r["auroc_lo"], r["auroc_hi"], r["tpr_at_fpr"], r["n_attacked"], strict=True
        )
    ]
    t = r.pivot_table(
        index=["dataset", "arch", "scenario", "detector"],
        columns="population",
        values="cell",
        aggfunc="first",
        sort=False,
    )
    order = _order({c.rsplit(" (", 1)[0] for c in t.columns})
    columns = [f"{p} ({subset})" for p in order for subset in ("all", "effective")]
    n = r[r["attacks"] == "all"][["n_honest", "n_attacked"]]
    write_table(
        t[[c for c in columns if c in t.columns]],
        out["roc_csv"],
        out["roc_tex"],
        "Every detector against every attack population, over every attacked model (all) and "
        "over the effective attacks only (effective: held-out attack success gained over M of at "
        f"least {roc['min_success'].iloc[0]:g}): AUROC [bootstrap interval] / detection rate at a "
        f"{roc['fpr'].iloc[0] * 100:g}\\% false-alarm rate, against all honest fine-tunes "
        f"({int(n['n_honest'].min())} to {int(n['n_honest'].max())} honest and "
        f"{int(n['n_attacked'].min())} to {int(n['n_attacked'].max())} attacked models per cell).",
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
    """Fig. 5 with populations, as small multiples: one panel per population (each honest
    variant, the sampled null, each attack population), its per-image reconstruction errors
    against those of M and of all honest fine-tunes, with the paper's threshold Tr and the models
    the paper's rule flags in the panel's title. Three colours, the same in every panel."""
    import seaborn as sns

    df = pd.read_parquet(errors_parquet, columns=["model", "error"])
    det = pd.read_csv(detection_csv)
    det = det[det["split"] != "shadow"]
    det["population"] = det.apply(_column, axis=1)
    df = df.merge(det[["model", "role", "population"]], on="model")
    pops = [p for p in _order(df["population"].unique()) if p != "Genuine"]
    lo, hi = df["error"].clip(lower=1e-12).min(), df["error"].max()
    edges = np.geomspace(lo, hi, bins + 1) if hi > lo else bins
    sns.set_theme(context=context, style="whitegrid")
    colors = sns.color_palette(palette, 3)  # M, all honest, the panel's population
    ncol = min(4, len(pops))
    nrow = -(-len(pops) // ncol)
    fig, axes = plt().subplots(
        nrow, ncol, figsize=(2.9 * ncol, 2.3 * nrow + 0.8), sharex=True, squeeze=False
    )
    threshold = float(det["paper_threshold"].iloc[0]) if "paper_threshold" in det else None
    layers = [
        ("M", df[df["role"] == "genuine"], colors[0]),
        ("all honest", df[df["role"] == "honest"], colors[1]),
    ]
    for ax, pop in zip(axes.flat, pops, strict=False):
        d = df[df["population"] == pop]
        for name, data, color in [*layers, (pop, d, colors[2])]:
            ax.hist(data["error"], bins=edges, density=True, histtype="step", color=color,
                    linewidth=1.4 if name == pop else 1.0, label=name)  # fmt: skip
        ax.set_xscale("log")
        models = det[det["population"] == pop]
        head = f"{pop} ({len(models)} models)"
        if threshold is not None:
            ax.axvline(threshold, color="red", linestyle="--", linewidth=1)
            head += f"\npaper's rule flags {int(models['paper_flagged'].sum())}/{len(models)}"
        ax.set_title(head, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(pops) :]:
        ax.axis("off")
    handles = [
        pyplot_line(colors[0], "M (genuine)"),
        pyplot_line(colors[1], "all honest fine-tunes"),
        pyplot_line(colors[2], "the panel's population"),
    ]
    if threshold is not None:
        handles.append(pyplot_line("red", f"the paper's Tr = {threshold:.3g}", "--"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.supxlabel("auto-encoder reconstruction error per trigger image (MSE, log scale)", fontsize=8,
                  y=0.06)  # fmt: skip
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save(fig, png, pdf, dpi)


def pyplot_line(color, label: str, linestyle: str = "-"):
    """A legend entry: a line of ``color``."""
    from matplotlib.lines import Line2D

    return Line2D([0], [0], color=color, linestyle=linestyle, label=label)


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
    as negatives; one shared legend below the panels, each detector with its own colour and line
    style) and a heatmap of AUROC over detector x attack population on a diverging scale centred
    at 0.5 (an inverted detector reads as such)."""
    import seaborn as sns

    sel = {"dataset": dataset, "arch": arch, "scenario": scenario}
    roc = _populations(pd.read_csv(roc_csv))
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
    fig, axes = plt().subplots(
        nrow, ncol, figsize=(3.0 * ncol, 2.8 * nrow + 1.2), sharex=True, sharey=True, squeeze=False
    )
    styles = series_styles(main, palette)
    for ax, pop in zip(axes.flat, pops, strict=False):
        c = curves[curves["population"] == pop]
        for det in main:
            p = c[c["detector"] == det]
            ax.plot(p["fpr"], p["tpr"], drawstyle="steps-post", linewidth=1.2, **styles[det])
        a = roc[roc["population"] == pop].set_index("detector")["auroc"]
        best = a[main].idxmax()
        ax.axvline(fpr, color="grey", linestyle=":", linewidth=1)
        ax.text(fpr, 0.02, f" false-alarm rate {fpr:g}", color="grey", fontsize=6, rotation=90,
                va="bottom", ha="right")  # fmt: skip
        ax.set_title(f"{pop}: best {best} ({a[best]:.2f})", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(pops) :]:
        ax.axis("off")
    fig.supxlabel("false-alarm rate (honest models flagged)", fontsize=8)
    fig.supylabel("detection rate", fontsize=8)
    handles = [pyplot_line(styles[d]["color"], d, styles[d]["linestyle"]) for d in main]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(main)), fontsize=7,
               frameon=False)  # fmt: skip
    n = roc[["n_honest", "n_attacked"]]
    fig.suptitle(
        f"{title}: {int(n['n_honest'].max())} honest vs "
        f"{int(n['n_attacked'].min())}-{int(n['n_attacked'].max())} attacked models",
        fontsize=9,
    )
    legend_rows = -(-len(main) // min(5, len(main)))
    fig.tight_layout(rect=(0, 0.04 + 0.035 * legend_rows, 1, 1))
    save(fig, out["roc_png"], out["roc_pdf"], dpi)

    _auroc_heatmap(roc, pops, title, out, dpi)


def _auroc_heatmap(roc: pd.DataFrame, pops: list[str], title: str, out: dict, dpi: int) -> None:
    """AUROC over detector x attack population, on a diverging scale centred at 0.5 over [0, 1]
    (an inverted detector reads as such)."""
    import seaborn as sns

    heat = roc.pivot_table(index="detector", columns="population", values="auroc", sort=False)
    heat = heat[pops]
    fig, ax = plt().subplots(figsize=(1.1 * len(pops) + 3, 0.32 * len(heat) + 1.6))
    sns.heatmap(
        heat,
        annot=True,
        fmt=".2f",
        vmin=0.0,
        vmax=1.0,
        center=0.5,
        cmap="RdBu",
        cbar_kws={"label": "AUROC (0.5 = chance; below: inverted)"},
        annot_kws={"fontsize": 7},
        ax=ax,
    )
    ax.set_title(f"AUROC, {title}", fontsize=9)
    ax.set_xlabel("attack population (kind, share of the target class, epochs)")
    ax.set_ylabel("")
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
    score (as its margin over its cell's calibrated threshold, 0 = the threshold) against the
    held-out attack success its fine-tune added over M (``calibration.success_gain``), the
    honest models' margins beside them, the effective-attack line."""
    import seaborn as sns

    sel = {"dataset": dataset, "arch": arch, "scenario": scenario}
    scores = pd.read_csv(scores_csv)
    det = pd.read_csv(detection_csv)
    keys = ["dataset", "arch", "scenario", "seed", "model"]
    df = scores[
        (scores[list(sel)] == pd.Series(sel)).all(axis=1) & (scores["statistic"] == "score")
    ]
    det = det.assign(gain=success_gain(det))
    df = df[df["split"].isin(["fit", "heldout", "attack"])].merge(
        det[[*keys, "gain"]], on=keys, how="left"
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
            ax.scatter(a["gain"], a["margin"], s=14, color=colors[pop], label=pop)
        ax.axhline(0, color="red", linestyle="--", linewidth=1)
        ax.axvline(min_success, color="grey", linestyle=":", linewidth=1)
        ax.set_title(name, fontsize=8)
        ax.set_xlim(-0.2, 1.02)
        ax.set_xlabel("held-out success gained over M (honest: left)", fontsize=7)
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
        f"{title}: does each detector catch the attacks that work? (effective: success gained "
        f">= {min_success:g}, dotted; threshold: dashed)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    save(fig, png, pdf, dpi)
