"""Collection stage: the tidy tables of the whole grid, ROC over populations, and the conclusions.

``scores.csv`` and ``detection.csv`` gather the cells' tables of the same names; ``roc.csv`` has,
per detector statistic, honest variant (and all pooled) and attack population, the AUROC with a
bootstrap interval, the TPR at the configured false-alarm rate and the calibrated threshold's
detection and measured false-alarm rates; ``conclusions.txt`` the lines the workflow prints at the
end.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from poisondetect.detectors.base import statistic_name
from poisondetect.io import atomic_path, atomic_write_text
from poisondetect.model_level.calibration import effective, success_gain
from poisondetect.population import attack_population

log = logging.getLogger(__name__)

_GROUP = ["dataset", "arch", "scenario"]
_CELL = [*_GROUP, "seed"]


SUBSETS = ("all", "effective")  # every attacked model; those whose attack worked


def _roc_row(
    key, neg: np.ndarray, pos: np.ndarray, held: np.ndarray, *, fpr, bootstrap, level, seed
):
    """The ROC summary of one detector statistic: negatives ``neg`` (honest margins), positives
    ``pos`` (attacked margins), ``held`` (the held-out honest margins, for the false alarms)."""
    from poisondetect.metrics import auroc, auroc_interval, clopper_pearson, tpr_at_fpr

    if not len(pos):
        return dict(key, n_honest=len(neg), n_heldout=len(held), n_attacked=0)
    lo, hi = auroc_interval(neg, pos, n_boot=bootstrap, level=level, seed=seed)
    detected, alarms = int((pos > 0).sum()), int((held > 0).sum())
    d_lo, d_hi = clopper_pearson(detected, len(pos), level)
    f_lo, f_hi = clopper_pearson(alarms, len(held), level)
    return dict(
        key,
        auroc=auroc(neg, pos),
        auroc_lo=lo,
        auroc_hi=hi,
        fpr=fpr,
        tpr_at_fpr=tpr_at_fpr(neg, pos, fpr),
        detection_rate=detected / len(pos),
        detection_lo=d_lo,
        detection_hi=d_hi,
        false_alarm_rate=alarms / len(held) if len(held) else np.nan,
        false_alarm_lo=f_lo,
        false_alarm_hi=f_hi,
        n_honest=len(neg),
        n_heldout=len(held),
        n_attacked=len(pos),
    )


def roc_table(
    scores: pd.DataFrame,
    detection: pd.DataFrame,
    *,
    fpr: float,
    bootstrap: int,
    level: float,
    min_success: float,
    seed: int = 0,
    combined: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC summaries of every detector statistic, honest variant (and all of them pooled) and
    attack population, pooled over the seeds of a dataset x arch x scenario: over every attacked
    model (``attacks`` = all) and over the effective attacks only (``attacks`` = effective: the
    held-out attack success the fine-tune added over M at least ``min_success``,
    ``calibration.effective``).

    Each model's score enters as its margin over its own cell's calibrated threshold (the same
    ordering within a cell; comparable operating points across cells). AUROC and TPR at ``fpr``
    use every honest replicate (all scored out of sample); the calibrated threshold's false-alarm
    rate is measured on the held-out replicates only; detection and false-alarm rates carry exact
    (Clopper-Pearson) intervals at ``level``. Shadow attacks are never evaluated.

    Rows of ``scope`` population are per attack population; rows of ``scope`` family per attack
    kind (its fractions and epochs pooled; ``fraction`` and ``epochs`` empty) against every honest
    fine-tune, with the combined detector's leave-one-family-out fit beside its all-family one
    (statistic ``combined:lofo``, ``leave_one_family_out``) when ``combined`` (its config block)
    is given and the cells have shadow attacks. Returns (roc rows, ROC curve points against the
    pooled honest population).
    """
    from poisondetect.metrics import roc_curve_points

    success = success_gain(detection.set_index([*_CELL, "model"]))

    def prepared(scores):
        df = scores[scores["split"].isin(["fit", "heldout", "attack"])].copy()  # no shadows
        idx = pd.MultiIndex.from_frame(df[[*_CELL, "model"]])
        df["success"] = success.reindex(idx).to_numpy()
        df["margin"] = df["value"] - df["calibrated_threshold"]
        df["detector_stat"] = [
            statistic_name(d, s) for d, s in zip(df["detector"], df["statistic"], strict=True)
        ]
        return df

    df = prepared(scores)
    opts = dict(fpr=fpr, bootstrap=bootstrap, level=level, seed=seed)
    rows, curves = [], []
    for key, g in df.groupby(_GROUP + ["detector_stat"], sort=False):
        honest, attacked = g[g["role"] == "honest"], g[g["role"] == "attack"]
        variants = [("all", honest)] + list(honest.groupby("variant", sort=True))
        for (kind, frac, ep), a in attacked.groupby(["attack", "fraction", "epochs"], sort=True):
            for subset in SUBSETS:
                pos = a if subset == "all" else a[a["success"] >= min_success]
                pop = dict(
                    scope="population", attack=kind, fraction=frac, epochs=int(ep), attacks=subset
                )
                base = {**dict(zip(_GROUP + ["detector"], key, strict=True)), **pop}
                for hv, h in variants:
                    neg, held = h["margin"].to_numpy(), h.loc[h["split"] == "heldout", "margin"]
                    row = _roc_row(
                        {**base, "honest_variant": hv},
                        neg,
                        pos["margin"].to_numpy(),
                        held.to_numpy(),
                        **opts,
                    )
                    rows.append({**row, "min_success": min_success})
                    if hv == "all" and len(pos):
                        f, t = roc_curve_points(neg, pos["margin"].to_numpy())
                        curves += [
                            {**base, "fpr": fi, "tpr": ti} for fi, ti in zip(f, t, strict=True)
                        ]
    rows += family_rows(df, min_success=min_success, **opts)
    lofo = leave_one_family_out(scores, combined=combined, fpr=fpr)
    if len(lofo):
        rows += family_rows(prepared(lofo), min_success=min_success, **opts)
    return pd.DataFrame(rows), pd.DataFrame(curves)


def family_rows(df: pd.DataFrame, *, min_success: float, fpr, bootstrap, level, seed) -> list[dict]:
    """ROC rows (``scope`` = family, against every honest fine-tune pooled) of every detector
    statistic per attack family (kind), pooled over its fractions and epochs and the seeds:
    ``df`` is ``roc_table``'s (margins, success, no shadows)."""
    rows = []
    for key, g in df.groupby(_GROUP + ["detector_stat"], sort=False):
        for kind, a in g[g["role"] == "attack"].groupby("attack", sort=True):
            # honest rows scored for one family only (combined:lofo) go with that family
            honest = g[(g["role"] == "honest") & (g["attack"].isna() | (g["attack"] == kind))]
            neg, held = (
                honest["margin"].to_numpy(),
                honest.loc[honest["split"] == "heldout", "margin"],
            )
            for subset in SUBSETS:
                pos = a if subset == "all" else a[a["success"] >= min_success]
                base = dict(zip(_GROUP + ["detector"], key, strict=True))
                row = _roc_row(
                    {**base, "scope": "family", "attack": kind, "attacks": subset},
                    neg,
                    pos["margin"].to_numpy(),
                    held.to_numpy(),
                    fpr=fpr,
                    bootstrap=bootstrap,
                    level=level,
                    seed=seed,
                )
                rows.append({**row, "honest_variant": "all", "min_success": min_success})
    return rows


LOFO = "lofo"  # the combined detector's leave-one-family-out statistic (combined:lofo)


def leave_one_family_out(
    scores: pd.DataFrame, *, combined: dict | None, fpr: float, detector: str = "combined"
) -> pd.DataFrame:
    """The combined detector refitted per cell and left-out family: on the honest fitting
    replicates and the shadow attacks of the *other* families only, as ``detector`` is fitted in
    the workflow (the same class, ``combined``: its config block), over the same statistics (of
    every detector that reads no statistics itself). Each left-out family's evaluated attacks and
    every honest model are scored (a fitting replicate by a copy fitted without it), the threshold
    calibrated on the fitting replicates as for every detector. Returns scores.csv-shaped rows
    (``statistic`` = ``lofo``, ``attack`` the family each row was scored for; honest rows repeat
    per family) or an empty table when there is nothing to refit (no combined detector, no
    shadows, a single family)."""
    from poisondetect.detectors import registry
    from poisondetect.detectors.base import statistic_name
    from poisondetect.detectors.model_level import ModelRecord
    from poisondetect.metrics import calibrated_threshold

    if combined is None or "split" not in scores or not (scores["split"] == "shadow").any():
        return pd.DataFrame()
    cls = registry.get("model", detector)
    readers = {d for d in scores["detector"].unique() if d in registry.names("model")}
    sources = {d for d in readers if "statistics" not in registry.get("model", d).needs}
    own = scores[scores["detector"].isin(sources)]
    out = []
    for cell, g in own.groupby(_CELL, sort=True):
        info = g.drop_duplicates("model").set_index("model")
        stats = {
            m: {statistic_name(d, s): float(v) for d, s, v in zip(h["detector"], h["statistic"],
                                                                    h["value"], strict=True)}
            for m, h in g.groupby("model", sort=False)
        }  # fmt: skip
        rec = {
            m: ModelRecord(m, np.zeros(1), np.zeros(1), statistics=st) for m, st in stats.items()
        }
        genuine = ModelRecord("genuine", np.zeros(1), np.zeros(1))
        fit = [m for m in info.index if info.at[m, "split"] == "fit"]
        others = [m for m in info.index if info.at[m, "split"] == "heldout"]
        shadows = info[info["split"] == "shadow"]
        families = sorted(info.loc[info["split"] == "attack", "attack"].dropna().unique())
        for fam in families:
            train = [rec[m] for m in shadows.index[shadows["attack"] != fam]]
            if not train or not fit:
                continue
            det = registry.build("model", detector, combined)
            assert isinstance(det, cls)
            full = det.fit(genuine, [rec[m] for m in fit], train)
            values = {}
            for m in fit:  # a fitting replicate: scored by a copy fitted without it
                rest = [rec[o] for o in fit if o != m]
                one = registry.build("model", detector, combined).fit(genuine, rest, train)
                values[m] = float(one.score_samples([rec[m]])[0]) if rest else np.nan
            attacked = info.index[(info["split"] == "attack") & (info["attack"] == fam)]
            for m in [*others, *attacked]:
                values[m] = float(full.score_samples([rec[m]])[0])
            thr = calibrated_threshold(pd.Series([values[m] for m in fit]).dropna(), fpr)
            for m, v in values.items():
                out.append(
                    {
                        **dict(zip(_CELL, cell, strict=True)),
                        "model": m,
                        **{
                            k: info.at[m, k]
                            for k in ("split", "role", "variant", "fraction", "epochs")
                            if k in info
                        },  # fmt: skip
                        "attack": fam,
                        "detector": detector,
                        "statistic": LOFO,
                        "value": v,
                        "calibrated_threshold": thr,
                    }
                )
    return pd.DataFrame(out)


def bundle_table(bundles: list[str]) -> pd.DataFrame:
    """Every cell's detector bundle (each says its cell) with the content digest it was written
    with: what a user compares with the digest ``audit`` prints."""
    from poisondetect.bundles import read_metadata

    rows = []
    for path in bundles:
        meta = read_metadata(path)
        rows.append({**meta.get("cell", {}), "bundle": path, "digest": meta.get("digest", "")})
    return pd.DataFrame(rows)


def collect(
    cell_scores: list[str],
    cell_detections: list[str],
    scores_out: str,
    detection_out: str,
    roc_out: str,
    curves_out: str,
    conclusions_out: str,
    *,
    bundles: list[str] = (),
    bundles_out: str | None = None,
    combined: dict | None = None,
    fpr: float,
    bootstrap: int,
    level: float,
    min_success: float,
) -> None:
    """The tidy tables of the whole grid: per-model scores, the paper's detection table, ROC, and
    the conclusions."""
    scores = pd.concat([pd.read_csv(p) for p in cell_scores], ignore_index=True)
    det = pd.concat([pd.read_csv(p) for p in cell_detections], ignore_index=True)
    roc, curves = roc_table(
        scores,
        det,
        fpr=fpr,
        bootstrap=bootstrap,
        level=level,
        min_success=min_success,
        combined=combined,
    )
    tables = [(scores, scores_out), (det, detection_out), (roc, roc_out), (curves, curves_out)]
    if bundles_out:
        tables.append((bundle_table(list(bundles)), bundles_out))
    for df, out in tables:
        with atomic_path(out) as tmp:
            df.to_csv(tmp, index=False)
    log.info(
        "%d models, %d detector statistics, %d ROC rows",
        len(det),
        scores[["detector", "statistic"]].drop_duplicates().shape[0],
        len(roc),
    )
    lines = verdict_lines(det, min_success) + summary_lines(roc, det) + family_lines(roc)
    if bundles_out:
        lines.append(f"detector bundles for audit and their content digests: {bundles_out}")
    for line in lines:
        log.info("%s", line)
    atomic_write_text(conclusions_out, "".join(f"{line}\n" for line in lines))


def _flag_counts(models: pd.DataFrame, column: str) -> str:
    return f"{int(models[column].sum())}/{len(models)}"


def _best(g: pd.DataFrame) -> str:
    """The best detector of one population and subset: AUROC [interval], and the calibrated
    threshold's detection and measured false-alarm rates with their exact intervals."""
    g = g[g["n_attacked"] > 0]
    if g.empty:
        return "none"
    b = g.sort_values(["auroc", "tpr_at_fpr"], ascending=False).iloc[0]
    return (
        f"{b['detector']} AUROC {b['auroc']:.2f} [{b['auroc_lo']:.2f}, {b['auroc_hi']:.2f}], "
        f"detects {b['detection_rate']:.2f} [{b['detection_lo']:.2f}, {b['detection_hi']:.2f}] "
        f"at a measured false-alarm rate {b['false_alarm_rate']:.2f} "
        f"[{b['false_alarm_lo']:.2f}, {b['false_alarm_hi']:.2f}]"
    )


def _rate(models: pd.DataFrame, column: str) -> str:
    """k/n flagged, the rate and its exact 95 % interval."""
    from poisondetect.metrics import clopper_pearson

    k, n = int(models[column].sum()), len(models)
    if not n:
        return "0/0"
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def verdict_lines(detection: pd.DataFrame, min_success: float) -> list[str]:
    """The audit's verdict per dataset x arch x scenario (seeds pooled): the false-alarm rate its
    calibration guarantees, the effective and all attacks it flags and the held-out honest
    models it flags, with exact intervals."""
    lines = []
    if "verdict_guaranteed_fpr" not in detection:
        return lines
    for key, d in detection.groupby(_GROUP, sort=True):
        att = d[d["split"] == "attack"]
        eff = att[effective(att, min_success)]
        held = d[d["split"] == "heldout"]
        rate = float(held["verdict_guaranteed_fpr"].max()) if len(held) else float("nan")
        lines.append(
            f"{'/'.join(key)} verdict (one test, its calibration guarantees a false-alarm rate "
            f"of {rate:.3g}): flags {_rate(eff, 'verdict_flagged')} effective attacks, "
            f"{_rate(att, 'verdict_flagged')} attacked models and "
            f"{_rate(held, 'verdict_flagged')} held-out honest models"
        )
    return lines


def summary_lines(roc: pd.DataFrame, detection: pd.DataFrame) -> list[str]:
    """The conclusions of a run, per attack population: the best detector against all honest
    fine-tunes over the effective attacks and over all of them (AUROC and its interval, the
    calibrated threshold's detection and measured false-alarm rates with exact intervals), the
    calibrated verdict and the paper's rule (attacked and honest models flagged)."""
    lines = []
    r = roc[
        (roc["honest_variant"] == "all")
        & ~roc["detector"].str.contains(":")
        & (roc["detector"] != "verdict")  # the best *detector*; the verdict has its own line
        & (roc.get("scope", "population") == "population")
    ]
    for key, g in r.groupby(_GROUP + ["attack", "fraction", "epochs"], sort=True):
        d = detection[
            (detection[_GROUP] == pd.Series(dict(zip(_GROUP, key[:3], strict=True)))).all(axis=1)
        ]
        # by the population's name (a sampled recipe's trained epochs differ from the name's)
        pop = attack_population(key[3], key[4], int(key[5]))
        att = d[(d["split"] == "attack") & d["model"].str.fullmatch(rf"{re.escape(pop)}_r\d+")]
        min_success = float(g["min_success"].iloc[0])
        eff = att[effective(att, min_success)]
        hon = d[d["split"] == "heldout"]
        rules = (
            f"calibrated verdict flags {_flag_counts(eff, 'verdict_flagged')} effective, "
            f"{_flag_counts(att, 'verdict_flagged')} attacked and "
            f"{_flag_counts(hon, 'verdict_flagged')} held-out honest"
        )
        if "paper_flagged" in d:
            rules += f"; paper's rule {_flag_counts(att, 'paper_flagged')} attacked and "
            rules += f"{_flag_counts(d[d['role'] == 'honest'], 'paper_flagged')} honest"
        lines.append(
            f"{'/'.join(key[:3])} {key[3]} {key[4] * 100:g}% e{int(key[5])} ({len(eff)} of {len(att)} "
            f"effective: held-out success gained over M >= {min_success:g}; "
            f"{int(g['n_honest'].iloc[0])} honest): effective: best "
            f"{_best(g[g['attacks'] == 'effective'])}; all: best {_best(g[g['attacks'] == 'all'])}; "
            f"{rules}"
        )
    return lines


def family_lines(roc: pd.DataFrame) -> list[str]:
    """Per attack family (its fractions and epochs pooled) over the effective attacks: the best
    detector, and the combined detector's all-family and leave-one-family-out AUROC."""
    if "scope" not in roc:
        return []
    r = roc[(roc["scope"] == "family") & (roc["attacks"] == "effective")]
    lines = []
    for key, g in r.groupby([*_GROUP, "attack"], sort=True):
        main = g[~g["detector"].str.contains(":") & (g["detector"] != "verdict")]
        line = f"{'/'.join(key[:3])} family {key[3]}: effective: best {_best(main)}"
        v = g[(g["detector"] == "verdict") & (g["n_attacked"] > 0)]
        if len(v):
            v = v.iloc[0]
            line += (
                f"; the verdict detects {v['detection_rate']:.2f} [{v['detection_lo']:.2f}, "
                f"{v['detection_hi']:.2f}]"
            )
        for det in ("combined", f"combined:{LOFO}"):
            c = g[(g["detector"] == det) & (g["n_attacked"] > 0)]
            if len(c):
                c = c.iloc[0]
                line += f"; {det} AUROC {c['auroc']:.2f} [{c['auroc_lo']:.2f}, {c['auroc_hi']:.2f}]"
        lines.append(line)
    return lines
