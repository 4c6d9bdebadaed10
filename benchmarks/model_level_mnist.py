"""Benchmark: model-level detection on populations of models (the paper's CNN, MNIST or CIFAR-10).

Runs the repository's Snakemake workflow (model level only): one genuine model M trained on 80 %
of the training set (the paper's new-data scenario), then populations fine-tuned from it. The
honest null is realistic: the paper's honest fine-tune (the reference of its threshold Tr), fine-
tunes on unseen data and at a 3x learning rate, and the sampled null -- honest fine-tunes that
each draw their own learning rate, epochs, batch size, weight decay, optimizer, augmentation and
data (``finetune.sampled``). The attacks (flipping FA and pattern addition PAA on 2 %, 5 % and
50 % of the target class; with --families every kind of poisondetect/attacks/registry.py) each
draw their own class pair, so no detector can know the target, and each draws its training recipe
from the sampled null's ranges, as an honest user would (``attacks.sampled``; --attacker-recipe
fixed: the fixed recipe of the runs before issue 23); a few shadow attacks per population, on
other pairs, fit the combined detector and are never evaluated. Every replicate has its own seed.

The script prints, per detector and attack population, against all honest models pooled and
against the sampled null alone, over the effective attacks (held-out attack success gained over M
>= 0.2) and over all of them: the AUROC with its bootstrap 95 % interval, the TPR at a 5 %
false-alarm rate, and the calibrated threshold's detection and measured false-alarm rates with
exact (Clopper-Pearson) intervals; then the cost per model of every detector, the wall time of
every stage, and the machine.

Usage (from the repository root)::

    .venv/bin/python benchmarks/model_level_mnist.py                 # --paper on a GPU, else --quick
    .venv/bin/python benchmarks/model_level_mnist.py --quick --cores 2
    .venv/bin/python benchmarks/model_level_mnist.py --quick --families   # every attack family
    .venv/bin/python benchmarks/model_level_mnist.py --paper --data /path/to/mnist
    .venv/bin/python benchmarks/model_level_mnist.py --quick --dataset cifar10 \
        --data ../shared/data/cifar10_jpg.tar.gz     # the JPEG copy of CIFAR-10, a subsample

Settings
  --paper  full training set, CNN width 1.0, M 30 epochs (SGD, momentum 0.9, weight decay 5e-4,
           lr 0.01 divided by 10 after half), fine-tunes of the paper's 50 epochs at lr/10,
           attacks of 25 and 50 epochs, 10 replicates (+ 3 shadows) of each attack, 5 of each named
           honest variant, a sampled null of 40, auto-encoder 100 epochs, the whole test set as
           trigger set.
  --quick  10,000 training images (stratified), 2,000 trigger images, width 0.5, M 12 epochs,
           named fine-tunes and attacks of 5 epochs, 5 replicates (+ 2 shadows) of each attack, 2
           of each named honest variant, a sampled null of 30 (2-10 epochs), auto-encoder 60
           epochs: a 2-core CPU.
  --families  (with either) every attack family (flip, pattern, badnets, blend, wanet,
           clean_label, adaptive) on 10 % and 50 % of the target class's budget, at strengths where each
           likely works (FAMILIES), attackers' recipes sampled.
Any of --max-train, --width, --genuine-epochs, --finetune-epochs, --replicates, --sampled,
--fractions overrides a preset. The script also prints each detector's AUROC per attack family
and the combined detector's leave-one-family-out AUROC (combined:lofo).

The work directory (default /tmp/poisondetect-bench/model_level_<dataset>) receives the config
(bench-config.yaml), the workflow's results/ and logs/, snakemake.log, and benchmark_report.txt
(this script's printed report). Earlier outputs in it are deleted first unless --resume is given.
--report-only runs no workflow and reports the results already there: for example after a
Snakemake command of your own in the work directory (say with --forcerun finetune_attack and
--rerun-triggers without code, to redo the attacks after a change to them without refitting the
honest null).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's package

from _bench import (  # noqa: E402
    DEFAULT_MNIST,
    Report,
    finish_benchmark,
    fmt,
    has_cuda,
    stage_of,
    start_benchmark,
)

from poisondetect.model_level.calibration import effective, success_gain  # noqa: E402
from poisondetect.names import MODEL_ATTACKS, attack_label  # noqa: E402

STAGES = [
    "prepare_data",
    "train_genuine",
    "finetune_honest",
    "finetune_sampled",
    "finetune_attack",
    "fit_autoencoder",
    "ae_errors",
    "score_detector",
    "calibrate",
    "report",
]

# Optimizer settings of the genuine model; the fine-tunes use the same optimizer at lr x factor.
OPTIMIZERS = {
    "sgd": dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4),
    "adam": dict(optimizer="adam", lr=1e-3, weight_decay=0.0),
}

PRESETS = {
    "paper": dict(max_train=None, trigger=None, width=1.0, genuine_epochs=30, finetune_epochs=50,
                  attack_epochs=[25, 50], replicates=10, shadows=3, named=5, sampled=40,
                  sampled_epochs=[10, 80], fractions=[0.02, 0.05, 0.5], ae_epochs=100),
    "quick": dict(max_train=10_000, trigger=2_000, width=0.5, genuine_epochs=12, finetune_epochs=5,
                  attack_epochs=[5], replicates=5, shadows=2, named=2, sampled=30,
                  sampled_epochs=[2, 10], fractions=[0.02, 0.05, 0.5], ae_epochs=60),
}  # fmt: skip
# --families: every attack kind of the registry, at strengths where it likely works on MNIST
# (a 28x28 grey image): the fractions are shares of the target class, so the all-to-one kinds
# poison as many images as the source-specific ones (1 % and 5 % of the training set at 0.1, 0.5)
FAMILIES = dict(
    kinds=list(MODEL_ATTACKS),  # every registered kind
    fractions=[0.1, 0.5],
    strengths={
        "badnets_distance": 2,
        "badnets_value": 1.0,
        "blend_alpha": 0.2,
        "wanet_k": 4,
        "wanet_strength": 4.0,  # 2 px on average; at 1.0 (0.5 px) it never took (docs/benchmarks.md)
        "clean_label_eps": 0.3,
        "clean_label_steps": 10,
        "clean_label_value": 1.0,
        "clean_label_corners": 4,  # Turner et al.'s; one corner never took
        "adaptive_steps": 200,
        "adaptive_feature_weight": 1.0,
        "adaptive_mask_weight": 0.01,
        "adaptive_cover": 0.5,
    },
)
FPR = 0.05  # calibration.fpr of the benchmark's config (and of its candidate verdicts)
DATASETS = {
    "mnist": dict(format="mnist", label="MNIST", pattern_size=5),
    "cifar10": dict(format="image_folder", label="CIFAR-10 (JPEG copy)", pattern_size=5),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="MNIST: directory of the four IDX files (default ../shared/data/mnist); CIFAR-10: "
        "an image folder or archive (train/<class>/, test/<class>/)",
    )
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="small CPU-sized run (default without a GPU)"
    )
    mode.add_argument(
        "--paper", action="store_true", help="the paper's epochs on all data (default with a GPU)"
    )
    p.add_argument(
        "--max-train", type=int, help="stratified subsample of the 60,000 training images"
    )
    p.add_argument(
        "--width", type=float, help="channel-width multiplier of the CNN (1.0 = the paper's)"
    )
    p.add_argument("--genuine-epochs", type=int, help="epochs of the genuine model M")
    p.add_argument(
        "--finetune-epochs", type=int, help="epochs of the honest fine-tunes and attacks"
    )
    p.add_argument(
        "--replicates", type=int, help="evaluated replicates of every attacked population"
    )
    p.add_argument("--sampled", type=int, help="size of the sampled honest null")
    p.add_argument(
        "--calibration",
        action="store_true",
        help="a sampled null of 80: with the named variants' 6, 43 honest fitting replicates (the "
        "verdict's 5 %% needs 19; two statistics are flaggable beyond every honest model from "
        "39) and 43 held out to measure its false alarms",
    )
    p.add_argument("--fractions", type=float, nargs="+", help="shares of the target class attacked")
    p.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="sgd",
        help="optimizer of every training stage (default sgd; adam to see its pitfall)",
    )
    p.add_argument(
        "--families",
        action="store_true",
        help="every attack family of the registry (flip, pattern, badnets, blend, wanet, "
        "clean_label, adaptive) at strengths where it likely works, on 10 %% and 50 %% of the target "
        "class's budget (--fractions overrides)",
    )
    p.add_argument(
        "--attacker-recipe",
        choices=["sampled", "fixed"],
        default="sampled",
        help="sampled (default): every attacker draws its training recipe from the sampled "
        "honest null's ranges (attacks.sampled); fixed: the attacks' fixed recipe (lr x 0.1, "
        "the preset's epochs) of the runs before issue 23",
    )
    p.add_argument(
        "--verdict-candidates",
        nargs="*",
        metavar="STATS",
        help="compare verdicts on this run's scores: each a comma-separated list of statistics "
        "(detector or detector:statistic), prefixed fisher= to combine them by Fisher's sum "
        "(calibration.combine); with no list, the preset candidates "
        "(VERDICT_CANDIDATES)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume", action="store_true", help="keep earlier outputs in the work directory"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run no workflow: report the results already in the work directory (an earlier "
        "run's, or those of a snakemake command of your own there with its bench-config.yaml); "
        "a warning says when this command's settings differ from the work directory's",
    )
    args = p.parse_args(argv)
    if args.data is None:
        args.data = (
            DEFAULT_MNIST
            if args.dataset == "mnist"
            else DEFAULT_MNIST.parent / "cifar10_jpg.tar.gz"
        )
    if args.verdict_candidates == []:
        args.verdict_candidates = list(VERDICT_CANDIDATES)
    if args.workdir is None:
        args.workdir = Path(f"/tmp/poisondetect-bench/model_level_{args.dataset}")
    return args


def settings(args: argparse.Namespace) -> tuple[str, dict]:
    preset = (
        "paper" if args.paper else "quick" if args.quick else ("paper" if has_cuda() else "quick")
    )
    s = dict(PRESETS[preset])
    for key in (
        "max_train",
        "width",
        "genuine_epochs",
        "finetune_epochs",
        "replicates",
        "sampled",
        "fractions",
    ):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.finetune_epochs is not None:
        s["attack_epochs"] = [args.finetune_epochs]
    if args.calibration:
        s["sampled"] = 80
    s["kinds"] = ["flip", "pattern"]
    s["strengths"] = {}
    if args.families:
        s["kinds"], s["strengths"] = list(FAMILIES["kinds"]), dict(FAMILIES["strengths"])
        if args.fractions is None:
            s["fractions"] = list(FAMILIES["fractions"])
    s["attacks_sampled"] = args.attacker_recipe == "sampled"
    return preset, s


def build_config(args: argparse.Namespace, s: dict) -> dict:
    ds = DATASETS[args.dataset]
    lr = OPTIMIZERS[args.optimizer]
    e = s["finetune_epochs"]
    return {
        "device": "auto",
        "datasets": {
            args.dataset: {
                "format": ds["format"],
                "path": str(args.data.resolve()),
                "label": ds["label"],
                "max_train": s["max_train"],
                **({"channels": 3, "image_size": 32} if ds["format"] == "image_folder" else {}),
            }
        },
        "model_level": {
            "jobs": "per_population",  # 1 job per population: the CPU runs two at a time anyway
            "datasets": [args.dataset],
            "archs": ["cnn"],
            "scenarios": ["new_data"],  # M on 80 %: honest users also have data M never saw
            "new_data_fraction": 0.8,
            "seeds": [args.seed],
            "width": s["width"],
            "train": {
                "epochs": s["genuine_epochs"],
                "batch_size": 128,
                **lr,
                "lr_milestones": [0.5],
            },
            "finetune": {
                "replicates": s["named"],
                "variants": {
                    "paper": {"epochs": e, "lr_factor": 0.1, "data": "all"},
                    "unseen": {"epochs": e, "lr_factor": 0.1, "data": "unseen"},
                    "lr3x": {"epochs": e, "lr_factor": 0.3, "data": "all"},
                },
                "sampled": {"replicates": s["sampled"], "epochs": s["sampled_epochs"]},
            },
            "attacks": {
                "kinds": s["kinds"],
                "sampled": s["attacks_sampled"],
                "epochs": s["attack_epochs"],
                "fraction": s["fractions"],
                "replicates": s["replicates"] + s["shadows"],
                "shadow_replicates": s["shadows"],
                "lr_factor": 0.1,
                "target_class": "random",
                "attacker_class": "random",
                "pattern_size": ds["pattern_size"],
                "pattern_value": 1.0,
                **s["strengths"],
            },
            "trigger_set": {"max_samples": s["trigger"], "batch_size": 512},
            "autoencoder": {
                "hidden": [128],
                "latent": 32,
                "epochs": s["ae_epochs"],
                "lr": 1e-3,
                "batch_size": 128,
            },
            "calibration": {"fpr": FPR, "fit_share": 0.5, "min_success": 0.2},
        },
        # disabled; the task only keeps the config check from looking for the default `digits`
        "sample_level": {
            "enabled": False,
            "tasks": {"t": {"dataset": args.dataset, "classes": [4, 0]}},
        },
    }


def model_stage(rel: Path) -> str | None:
    """The stage of a model-level job's benchmark TSV (``_bench.stage_of`` does the rest)."""
    name = rel.stem
    if name.startswith("finetune_honest_sampled"):
        return "finetune_sampled"
    if name.startswith("finetune_honest"):
        return "finetune_honest"
    if name.startswith("finetune_"):
        return "finetune_attack"
    if name.startswith("score_"):
        return "score_detector"
    return name if name in STAGES else None


def _cell(g: pd.Series) -> str:
    if not g["n_attacked"]:
        return "(none effective)"
    return (
        f"{g['auroc']:.2f} [{g['auroc_lo']:.2f},{g['auroc_hi']:.2f}]/{g['tpr_at_fpr']:.2f}/"
        f"{g['detection_rate']:.2f} [{g['detection_lo']:.2f},{g['detection_hi']:.2f}]/"
        f"{fmt(g['false_alarm_rate'], '.2f')} [{fmt(g['false_alarm_lo'], '.2f')},"
        f"{fmt(g['false_alarm_hi'], '.2f')}]"
    )


def roc_report(roc: pd.DataFrame, log: Report) -> None:
    """Against all honest models pooled and the sampled null alone, over the effective attacks
    and all of them: every detector x attack population."""
    roc = roc.copy()
    if "scope" in roc:  # the per-family rows: family_report
        roc = roc[roc["scope"] == "population"]
    roc["population"] = [
        f"{attack_label(k)} {f * 100:g}% e{e:g}"
        for k, f, e in zip(roc["attack"], roc["fraction"], roc["epochs"], strict=True)
    ]
    for hv, subset, title in (
        ("all", "effective", "all honest models pooled, effective attacks"),
        ("sampled", "effective", "the sampled honest null, effective attacks"),
        ("all", "all", "all honest models pooled, every attack"),
    ):
        r = roc[(roc["honest_variant"] == hv) & (roc["attacks"] == subset)]
        if r.empty:
            continue
        n = r.groupby("population")[["n_honest", "n_heldout", "n_attacked"]].first()
        log(
            f"Against {title}: {int(n['n_honest'].iloc[0])} honest "
            f"({int(n['n_heldout'].iloc[0])} held out); attacked models per population: "
            + ", ".join(f"{p} {int(k)}" for p, k in n["n_attacked"].items())
        )
        log(
            "  cell: AUROC [95% CI] / TPR at FPR 0.05 / calibrated threshold's detection rate "
            "[exact 95% CI] / measured false-alarm rate [exact 95% CI]"
        )
        pops = list(dict.fromkeys(r.sort_values(["attack", "fraction", "epochs"])["population"]))
        for det, g in r.groupby("detector", sort=True):
            g = g.set_index("population")
            log(f"  {det}")
            for p in pops:
                log(f"    {p:<14} {_cell(g.loc[p])}")
        log("")


def _ci(k: int, n: int) -> str:
    from poisondetect.metrics import clopper_pearson

    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]" if n else "-"


def _verdict_groups(det: pd.DataFrame, min_success: float) -> tuple[pd.DataFrame, ...]:
    """The rows a verdict is judged on: evaluated attacks, the effective ones, held-out honest
    models and honest fitting replicates."""
    honest = det[det["role"] == "honest"]
    att = det[det["split"] == "attack"]
    eff = att[effective(att, min_success)]
    return att, eff, honest[honest["split"] == "heldout"], honest[honest["split"] == "fit"]


def verdict_report(det: pd.DataFrame, min_success: float, log: Report) -> None:
    """The audit's verdict: effective attacks detected and held-out honest models flagged (exact
    intervals), the rate its calibration guarantees, and which honest recipes raise its false
    alarms (every honest model, each judged out of sample, by hp_* setting)."""
    att, eff, held, _ = _verdict_groups(det, min_success)
    honest = det[det["role"] == "honest"]
    log("The verdict (one statistic over calibration.verdict, one threshold):")
    log(f"  effective attacks detected : {_ci(int(eff['verdict_flagged'].sum()), len(eff))}")
    log(f"  all attacks detected       : {_ci(int(att['verdict_flagged'].sum()), len(att))}")
    log(f"  held-out honest flagged    : {_ci(int(held['verdict_flagged'].sum()), len(held))}")
    rate = held["verdict_guaranteed_fpr"].max() if len(held) else float("nan")
    log(f"  rate its calibration guarantees: {rate:.3f}")
    for (kind, frac), g in eff.groupby(["attack", "fraction"]):
        log(f"    {kind} {frac * 100:g}% effective: {_ci(int(g['verdict_flagged'].sum()), len(g))}")
    hp = [c for c in honest.columns if c.startswith("hp_")]
    if hp:
        log("  honest models flagged (fitting replicates against the others) by recipe:")
    for col in hp:
        v = honest[col]
        if pd.api.types.is_numeric_dtype(v) and v.nunique() > 4:
            bins = pd.qcut(v, 3, duplicates="drop")
        else:
            bins = v.astype(str)
        parts = [
            f"{b}: {int(g['verdict_flagged'].sum())}/{len(g)}"
            for b, g in honest.groupby(bins, observed=True)
        ]
        log(f"    {col:<18} " + "; ".join(parts))
    log("")


# Verdicts compared on the same scores (--verdict-candidates): what calibration.verdict (and
# calibration.combine, a fisher= prefix) could be. Each is calibrated as the workflow calibrates
# it (calibration.verdict_scores); the first is the default of this release, the second the
# default before it, the third the one before that; then Fisher's sum over five statistics (more
# detections, one more held-out false alarm on seed 5: docs/benchmarks.md) and over the default's;
# then both with neuron stimulation added, and neuron stimulation alone.
VERDICT_CANDIDATES = [
    "differential_trigger_inversion,final_layer:honest_z,max_margin:honest_z",
    "differential_trigger_inversion,final_layer:honest_z",
    "differential_trigger_inversion,final_layer",
    "fisher=differential_trigger_inversion,final_layer:honest_z,max_margin:honest_z,"
    "differential_trigger_inversion:honest_z,prediction_change:worst_class",
    "fisher=differential_trigger_inversion,final_layer:honest_z,max_margin:honest_z",
    "differential_trigger_inversion,final_layer:honest_z,max_margin:honest_z,"
    "neuron_stimulation:honest_z",
    "fisher=differential_trigger_inversion,final_layer:honest_z,max_margin:honest_z,"
    "differential_trigger_inversion:honest_z,prediction_change:worst_class,"
    "neuron_stimulation:honest_z",
    "neuron_stimulation:honest_z",
    "differential_trigger_inversion,prediction_flow:largest",
    "trigger_inversion:honest_z,differential_trigger_inversion",
    "differential_trigger_inversion",
    "trigger_inversion,prediction_flow:largest",
    "trigger_inversion,differential_trigger_inversion,prediction_flow:largest",
    "final_layer,differential_trigger_inversion,prediction_flow:largest",
    "final_layer,differential_trigger_inversion,combined",
    "combined",
    "drift_class_profile,differential_trigger_inversion",
    "trigger_inversion:honest_z",
    "trigger_inversion:honest_z,final_layer",
    "trigger_inversion:honest_z,differential_trigger_inversion,final_layer",
    "trigger_inversion:honest_z,differential_trigger_inversion:honest_z",
    "differential_trigger_inversion:honest_z",
    "final_layer:honest_z",
    "trigger_inversion:honest_z,final_layer:honest_z",
    "trigger_inversion:honest_z,differential_trigger_inversion,final_layer:honest_z",
    "differential_trigger_inversion,max_margin:honest_z",
    "max_margin:honest_z",
    "max_margin",
]


def verdict_candidates(
    work: Path, candidates: list[str], fpr: float, min_success: float, log: Report
) -> None:
    """Every candidate verdict (comma-separated statistics) calibrated on this run's scores:
    effective attacks detected per family, held-out honest models flagged (exact intervals) and
    fitting replicates flagged when judged against the others."""
    from poisondetect.errors import PoisonDetectError
    from poisondetect.model_level.calibration import verdict_scores

    ml = work / "results" / "model_level"
    scores = pd.read_csv(ml / "scores.csv")
    det = pd.read_csv(ml / "detection.csv")
    cell = ["dataset", "arch", "scenario", "seed"]
    log(
        f"Candidate verdicts on the same scores (calibration.fpr {fpr:g}; effective = held-out "
        f"success gained over M >= {min_success:g}):"
    )
    scored = set(scores["detector"] + ":" + scores["statistic"]) | set(scores["detector"])
    for cand in candidates:
        # "fisher=a,b": calibration.combine fisher over a and b; "a,b": the smallest p-value
        combine, _, stats = cand.rpartition("=")
        combine = combine or "smallest_p"
        missing = [name for name in stats.split(",") if name not in scored]
        if missing:
            log(f"  {cand}: not computed ({', '.join(missing)} not scored in this run)")
            continue
        try:
            v = pd.concat(
                verdict_scores(g, stats.split(","), fpr, combine).assign(
                    **dict(zip(cell, key, strict=True))
                )
                for key, g in scores.groupby(cell)
            )
        except PoisonDetectError as err:
            log(f"  {cand}: not computed ({err})")
            continue
        d = det.drop(columns=["split"]).merge(v, on=[*cell, "model"])
        _, eff, held, fit = _verdict_groups(d, min_success)
        flag = "calibrated_flagged"
        log(f"  {cand}")
        log(
            f"    effective detected {_ci(int(eff[flag].sum()), len(eff))}; held-out honest "
            f"flagged {_ci(int(held[flag].sum()), len(held))}; fitting replicates flagged "
            f"{_ci(int(fit[flag].sum()), len(fit))}; guaranteed {held['guaranteed_fpr'].max():.3f}"
        )
        fam = [f"{k} {int(g[flag].sum())}/{len(g)}" for k, g in eff.groupby("attack")]
        log(f"    by family (effective): {', '.join(fam) or '-'}")
    log("")


def family_report(roc: pd.DataFrame, log: Report) -> None:
    """Per attack family (its fractions and epochs pooled), against all honest models, over the
    effective attacks: every detector's AUROC, the best one, and the combined detector's
    leave-one-family-out fit (combined:lofo: its shadows only from the other families) beside
    its all-family fit."""
    if "scope" not in roc:
        return
    r = roc[(roc["scope"] == "family") & (roc["attacks"] == "effective")]
    # the lofo fit; statistics the default verdict (or the one before) reads
    keep = {
        "combined:lofo",
        "prediction_flow:largest",
        "trigger_inversion:honest_z",
        "differential_trigger_inversion:honest_z",
        "final_layer:honest_z",
        "max_margin:honest_z",
        "neuron_stimulation:honest_z",
    }
    r = r[~r["detector"].str.contains(":") | r["detector"].isin(keep)]
    if r.empty:
        return
    log("Per attack family (fractions and epochs pooled), all honest models, effective attacks:")
    log("  cell: AUROC [95% CI] / TPR at FPR 0.05 / detection rate / false-alarm rate")
    for kind, g in r.groupby("attack", sort=False):
        n = int(g["n_attacked"].max())
        log(f"  {kind} ({attack_label(kind)}): {n} effective attacks")
        if not n:
            continue
        g = g[g["n_attacked"] > 0].sort_values("auroc", ascending=False)
        for _, row in g.iterrows():
            log(f"    {row['detector']:<32} {_cell(row)}")
    log("")


KEPT = re.compile(r"(\d+) of (\d+) models' statistics kept from an earlier run")


def detector_costs(work: Path, n_models: int, log: Report) -> None:
    """Seconds per model of every detector's scoring job (fit on M, score every model); a job
    that kept some models' statistics from an earlier run (the score cache, a resumed run) is
    divided by the models it scored."""
    root = work / "results" / "benchmarks" / "model_level"
    rows = {}
    for tsv in sorted(root.rglob("score_*.tsv")):
        b = pd.read_csv(tsv, sep="\t")
        job_log = (work / "logs" / tsv.relative_to(root.parent)).with_suffix(".log")
        found = KEPT.findall(job_log.read_text()) if job_log.is_file() else []
        scored = n_models - (int(found[-1][0]) if found else 0)
        rows[tsv.stem.removeprefix("score_")] = (float(b["s"].mean()), max(scored, 1))
    log(f"Cost per model of every detector (its scoring job's wall time / the {n_models} models, "
        "or those it scored):")  # fmt: skip
    for name, (sec, scored) in sorted(rows.items(), key=lambda kv: kv[1][0] / kv[1][1]):
        also = f"; {n_models - scored} kept from an earlier run" if scored < n_models else ""
        log(f"  {name:<32} {sec / scored:8.2f} s per model ({sec:.1f} s per cell{also})")
    log("")


def main(argv=None) -> None:
    t_start = time.perf_counter()
    args = parse_args(argv)
    preset, s = settings(args)
    opt = OPTIMIZERS[args.optimizer]
    opt_txt = ", ".join(f"{k} {v:g}" for k, v in opt.items() if k != "optimizer")
    r = s["replicates"]
    log, work = start_benchmark(
        args,
        build_config(args, s),
        f"model-level detection on populations, paper CNN on {DATASETS[args.dataset]['label']}",
        preset,
        f"data {args.data.resolve()}, training images {s['max_train'] or 'all'} (M on 80 %), "
        f"trigger images {s['trigger'] or 'the whole test set'}, CNN width {s['width']}, M "
        f"{s['genuine_epochs']} epochs ({opt['optimizer']}: {opt_txt}; lr /10 after half); "
        f"honest variants paper / unseen / lr3x x {s['named']} replicates, "
        f"{s['finetune_epochs']} epochs, and a sampled null of {s['sampled']} "
        f"({s['sampled_epochs'][0]}-{s['sampled_epochs'][1]} epochs); attacks "
        f"{', '.join(attack_label(k) for k in s['kinds'])} "
        f"({'recipes drawn as the sampled null' if s['attacks_sampled'] else 'fixed recipe'}"
        f"{', ' + str(s['strengths']) if s['strengths'] else ''}) on "
        f"{', '.join(f'{100 * f:g} %' for f in s['fractions'])} of a random target class -> a "
        f"random attacker class x {r} evaluated + {s['shadows']} shadow replicates, "
        f"{'/'.join(map(str, s['attack_epochs']))} epochs; AE 128-32, {s['ae_epochs']} epochs",
    )
    roc = pd.read_csv(work / "results" / "model_level" / "roc.csv")
    roc_report(roc, log)
    family_report(roc, log)
    det = pd.read_csv(work / "results" / "model_level" / "detection.csv")
    verdict_report(det, float(roc["min_success"].iloc[0]), log)
    if args.verdict_candidates:
        verdict_candidates(
            work, args.verdict_candidates, FPR, float(roc["min_success"].iloc[0]), log
        )
    detector_costs(work, len(det), log)
    det = det.assign(gain=success_gain(det))
    acc = det.groupby(["split", "variant", "attack", "fraction"], dropna=False)[
        ["accuracy", "attack_success", "attack_success_test", "gain"]
    ].agg(["mean", "min", "max"])
    log(
        "Test accuracy and attack success (training images / held-out / held-out gained over M) "
        "per population:"
    )
    for idx, row in acc.iterrows():
        log(
            f"  {' '.join(str(i) for i in idx if i == i):<26} acc "
            f"{100 * row[('accuracy', 'mean')]:6.2f} % (min {100 * row[('accuracy', 'min')]:.2f})"
            f"  success {fmt(row[('attack_success', 'mean')] * 100, '.1f')} %"
            f"  held-out {fmt(row[('attack_success_test', 'mean')] * 100, '.1f')} % "
            f"[{fmt(row[('attack_success_test', 'min')] * 100, '.0f')}, "
            f"{fmt(row[('attack_success_test', 'max')] * 100, '.0f')}]"
            f"  gained {fmt(row[('gain', 'mean')] * 100, '.1f')} %"
        )
    log("")
    stages = functools.partial(stage_of, part="model_level", classify=model_stage)
    finish_benchmark(log, work, stages, STAGES, "collect_model_level", t_start)


if __name__ == "__main__":
    main()
