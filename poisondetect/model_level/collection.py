"""Collection stage: the tidy tables of the whole grid, ROC over populations, and the conclusions.

``scores.csv`` and ``detection.csv`` gather the cells' tables of the same names; ``roc.csv`` has,
per detector statistic, honest variant (and all pooled) and attack population, the AUROC with a
bootstrap interval, the TPR at the configured false-alarm rate and the calibrated threshold's
detection and measured false-alarm rates; ``conclusions.txt`` the lines the workflow prints at the
end.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from poisondetect.detectors.base import statistic_name
from poisondetect.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

_GROUP = ["dataset", "arch", "scenario"]


def roc_table(
    scores: pd.DataFrame, *, fpr: float, bootstrap: int, level: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC summaries of every detector statistic, honest variant (and all of them pooled) and
    attack population, pooled over the seeds of a dataset x arch x scenario.

    Each model's score enters as its margin over its own cell's calibrated threshold (the same
    ordering within a cell; comparable operating points across cells). AUROC and TPR at ``fpr``
    use every honest replicate (all scored out of sample); the calibrated threshold's false-alarm
    rate is measured on the held-out replicates only. Returns (roc rows, ROC curve points of the
    pooled honest population).
    """
    from poisondetect.metrics import auroc, auroc_interval, roc_curve_points, tpr_at_fpr

    df = scores[scores["role"].isin(["honest", "attack"])].copy()
    df["margin"] = df["value"] - df["calibrated_threshold"]
    df["detector_stat"] = [
        statistic_name(d, s) for d, s in zip(df["detector"], df["statistic"], strict=True)
    ]
    rows, curves = [], []
    for key, g in df.groupby(_GROUP + ["detector_stat"], sort=False):
        honest, attacked = g[g["role"] == "honest"], g[g["role"] == "attack"]
        variants = [("all", honest)] + list(honest.groupby("variant", sort=True))
        for (kind, frac, ep), a in attacked.groupby(["attack", "fraction", "epochs"], sort=True):
            pos = a["margin"].to_numpy()
            for hv, h in variants:
                neg = h["margin"].to_numpy()
                held = h[h["split"] == "heldout"]
                lo, hi = auroc_interval(neg, pos, n_boot=bootstrap, level=level, seed=seed)
                rows.append(
                    dict(
                        zip(_GROUP + ["detector"], key, strict=True),
                        honest_variant=hv,
                        attack=kind,
                        fraction=frac,
                        epochs=int(ep),
                        auroc=auroc(neg, pos),
                        auroc_lo=lo,
                        auroc_hi=hi,
                        fpr=fpr,
                        tpr_at_fpr=tpr_at_fpr(neg, pos, fpr),
                        detection_rate=float((pos > 0).mean()),
                        false_alarm_rate=float((held["margin"] > 0).mean())
                        if len(held)
                        else np.nan,
                        n_honest=len(neg),
                        n_heldout=len(held),
                        n_attacked=len(pos),
                    )
                )
                if hv == "all":
                    f, t = roc_curve_points(neg, pos)
                    curves += [
                        dict(
                            zip(_GROUP + ["detector"], key, strict=True),
                            attack=kind,
                            fraction=frac,
                            epochs=int(ep),
                            fpr=fi,
                            tpr=ti,
                        )
                        for fi, ti in zip(f, t, strict=True)
                    ]
    return pd.DataFrame(rows), pd.DataFrame(curves)


def collect(
    cell_scores: list[str],
    cell_detections: list[str],
    scores_out: str,
    detection_out: str,
    roc_out: str,
    curves_out: str,
    conclusions_out: str,
    *,
    fpr: float,
    bootstrap: int,
    level: float,
) -> None:
    """The tidy tables of the whole grid: per-model scores, the paper's detection table, ROC, and
    the conclusions."""
    scores = pd.concat([pd.read_csv(p) for p in cell_scores], ignore_index=True)
    det = pd.concat([pd.read_csv(p) for p in cell_detections], ignore_index=True)
    roc, curves = roc_table(scores, fpr=fpr, bootstrap=bootstrap, level=level)
    for df, out in (
        (scores, scores_out),
        (det, detection_out),
        (roc, roc_out),
        (curves, curves_out),
    ):
        with atomic_path(out) as tmp:
            df.to_csv(tmp, index=False)
    log.info(
        "%d models, %d detector statistics, %d ROC rows",
        len(det),
        scores[["detector", "statistic"]].drop_duplicates().shape[0],
        len(roc),
    )
    lines = summary_lines(roc, det)
    for line in lines:
        log.info("%s", line)
    atomic_write_text(conclusions_out, "".join(f"{line}\n" for line in lines))


def _flag_counts(models: pd.DataFrame, column: str) -> str:
    return f"{int(models[column].sum())}/{len(models)}"


def summary_lines(roc: pd.DataFrame, detection: pd.DataFrame) -> list[str]:
    """The conclusions of a run, per attack population: the best detector against all honest
    fine-tunes (AUROC and its interval, the calibrated threshold's detection and measured
    false-alarm rates), the calibrated verdict and the paper's rule (attacked and honest models
    flagged)."""
    lines = []
    r = roc[(roc["honest_variant"] == "all") & ~roc["detector"].str.contains(":")]
    for key, g in r.groupby(_GROUP + ["attack", "fraction", "epochs"], sort=True):
        best = g.sort_values(["auroc", "tpr_at_fpr"], ascending=False).iloc[0]
        d = detection[
            (detection[_GROUP] == pd.Series(dict(zip(_GROUP, key[:3], strict=True)))).all(axis=1)
        ]
        att = d[(d["attack"] == key[3]) & (d["fraction"] == key[4]) & (d["epochs"] == key[5])]
        hon = d[d["split"] == "heldout"]
        rules = f"; calibrated verdict flags {_flag_counts(att, 'verdict_flagged')} of them"
        rules += f" and {_flag_counts(hon, 'verdict_flagged')} held-out honest"
        if "paper_flagged" in d:
            rules += f"; paper's rule {_flag_counts(att, 'paper_flagged')} and "
            rules += f"{_flag_counts(d[d['role'] == 'honest'], 'paper_flagged')} honest"
        lines.append(
            f"{'/'.join(key[:3])} {key[3]} {key[4] * 100:g}% e{key[5]}: best {best['detector']} "
            f"AUROC {best['auroc']:.2f} [{best['auroc_lo']:.2f}, {best['auroc_hi']:.2f}], "
            f"detects {best['detection_rate']:.2f} at a measured false-alarm rate "
            f"{best['false_alarm_rate']:.2f} ({int(best['n_attacked'])} attacked, "
            f"{int(best['n_honest'])} honest){rules}"
        )
    return lines
