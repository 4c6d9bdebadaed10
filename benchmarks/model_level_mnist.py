"""Benchmark: model-level detection on populations of models (the paper's CNN, MNIST or CIFAR-10).

Runs the repository's Snakemake workflow (model level only): one genuine model M trained on 80 %
of the training set (the paper's new-data scenario), then populations fine-tuned from it --
honest fine-tunes of three kinds (the paper's: same data, lr x 0.1; on unseen data only; a 3x
larger learning rate) and attacked ones (flipping FA and pattern addition PAA on 5 % and 50 % of
class 1, relabelled 7) -- at least 5 replicates each, every replicate with its own seed. Every
detector of the workflow scores every model. The script prints, per detector and attack
population, the AUROC with its bootstrap 95 % interval, the detection rate at a 5 % false-alarm
rate, and the calibrated threshold's measured detection and false-alarm rates on held-out honest
replicates, against the paper's honest fine-tunes, against fine-tunes on new data, and against
all honest variants pooled; then the wall time of every stage, and the machine.

Usage (from the repository root)::

    .venv/bin/python benchmarks/model_level_mnist.py                 # --paper on a GPU, else --quick
    .venv/bin/python benchmarks/model_level_mnist.py --quick --cores 2
    .venv/bin/python benchmarks/model_level_mnist.py --paper --data /path/to/mnist
    .venv/bin/python benchmarks/model_level_mnist.py --quick --dataset cifar10 \
        --data ../shared/data/cifar10_jpg.tar.gz     # the JPEG copy of CIFAR-10, a subsample

Settings
  --paper  full training set, CNN width 1.0, M 30 epochs (SGD, momentum 0.9, weight decay 5e-4,
           lr 0.01 divided by 10 after half), fine-tunes of the paper's 50 epochs at lr/10,
           attacks of 25 and 50 epochs, 10 replicates, auto-encoder 100 epochs, the whole test
           set as trigger set.
  --quick  10,000 training images (stratified), 2,000 trigger images, width 0.5, M 12 epochs,
           fine-tunes and attacks of 5 epochs, 5 replicates, auto-encoder 60 epochs: a 2-core CPU.
Any of --max-train, --width, --genuine-epochs, --finetune-epochs, --replicates overrides a preset.

The work directory (default /tmp/poisondetect-bench/model_level_<dataset>) receives the config
(bench-config.yaml), the workflow's results/ and logs/, snakemake.log, and benchmark_report.txt
(this script's printed report). Earlier outputs in it are deleted first unless --resume is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import (  # noqa: E402
    DEFAULT_MNIST,
    Report,
    finish_benchmark,
    fmt,
    has_cuda,
    start_benchmark,
)

STAGES = [
    "prepare_data",
    "train_genuine",
    "finetune_honest",
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
                  attack_epochs=[25, 50], replicates=10, ae_epochs=100),
    "quick": dict(max_train=10_000, trigger=2_000, width=0.5, genuine_epochs=12, finetune_epochs=5,
                  attack_epochs=[5], replicates=5, ae_epochs=60),
}  # fmt: skip
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
        "--replicates", type=int, help="replicates of every honest and attacked population"
    )
    p.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="sgd",
        help="optimizer of every training stage (default sgd; adam to see its pitfall)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume", action="store_true", help="keep earlier outputs in the work directory"
    )
    args = p.parse_args(argv)
    if args.data is None:
        args.data = (
            DEFAULT_MNIST
            if args.dataset == "mnist"
            else DEFAULT_MNIST.parent / "cifar10_jpg.tar.gz"
        )
    if args.workdir is None:
        args.workdir = Path(f"/tmp/poisondetect-bench/model_level_{args.dataset}")
    return args


def settings(args: argparse.Namespace) -> tuple[str, dict]:
    preset = (
        "paper" if args.paper else "quick" if args.quick else ("paper" if has_cuda() else "quick")
    )
    s = dict(PRESETS[preset])
    for key in ("max_train", "width", "genuine_epochs", "finetune_epochs", "replicates"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.finetune_epochs is not None:
        s["attack_epochs"] = [args.finetune_epochs]
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
                "replicates": s["replicates"],
                "variants": {
                    "paper": {"epochs": e, "lr_factor": 0.1, "data": "all"},
                    "unseen": {"epochs": e, "lr_factor": 0.1, "data": "unseen"},
                    "lr3x": {"epochs": e, "lr_factor": 0.3, "data": "all"},
                },
            },
            "attacks": {
                "kinds": ["flip", "pattern"],
                "epochs": s["attack_epochs"],
                "fraction": [0.05, 0.5],
                "replicates": s["replicates"],
                "lr_factor": 0.1,
                "target_class": 1,
                "attacker_class": 7,
                "pattern_size": ds["pattern_size"],
                "pattern_value": 1.0,
            },
            "trigger_set": {"max_samples": s["trigger"], "batch_size": 512},
            "autoencoder": {
                "hidden": [128],
                "latent": 32,
                "epochs": s["ae_epochs"],
                "lr": 1e-3,
                "batch_size": 128,
            },
            "calibration": {"fpr": 0.05, "fit_share": 0.6},
        },
        # disabled; the task only keeps the config check from looking for the default `digits`
        "sample_level": {
            "enabled": False,
            "tasks": {"t": {"dataset": args.dataset, "classes": [4, 0]}},
        },
    }


def stage_of(rel: Path) -> str | None:
    name = rel.stem
    if rel.parts[0] == "prepare_data":
        return "prepare_data"
    if rel.parts[0] != "model_level":
        return None
    if name == "collect":
        return "report"
    if name.startswith("finetune_honest"):
        return "finetune_honest"
    if name.startswith("finetune_"):
        return "finetune_attack"
    if name.startswith("score_"):
        return "score_detector"
    return name if name in STAGES else None


def roc_report(roc: pd.DataFrame, log: Report) -> None:
    """Per honest population: every detector x attack population."""
    roc = roc.copy()
    roc["population"] = [
        f"{'FA' if k == 'flip' else 'PAA'} {f * 100:g}% e{e}"
        for k, f, e in zip(roc["attack"], roc["fraction"], roc["epochs"], strict=True)
    ]
    for hv, title in (
        ("paper", "the paper's honest fine-tunes"),
        ("unseen", "honest fine-tunes on data M never saw"),
        ("lr3x", "honest fine-tunes at a 3x larger learning rate"),
        ("all", "all honest fine-tunes pooled"),
    ):
        r = roc[roc["honest_variant"] == hv]
        if r.empty:
            continue
        n = r.iloc[0]
        log(
            f"Against {title}: {int(n['n_honest'])} honest ({int(n['n_heldout'])} held out) vs "
            f"{int(n['n_attacked'])} attacked models per population"
        )
        log(
            "  cell: AUROC [95% CI] / TPR at FPR 0.05 / calibrated threshold: detection rate, false-alarm rate"
        )
        pops = list(dict.fromkeys(r.sort_values(["attack", "fraction", "epochs"])["population"]))
        log(f"  {'detector':<31}" + "".join(f"{p:>36}" for p in pops))
        for det, g in r.groupby("detector", sort=True):
            g = g.set_index("population")
            cells = [
                f"{g.loc[p, 'auroc']:.2f} [{g.loc[p, 'auroc_lo']:.2f},{g.loc[p, 'auroc_hi']:.2f}]"
                f"/{g.loc[p, 'tpr_at_fpr']:.2f}/{g.loc[p, 'detection_rate']:.2f},"
                f"{fmt(g.loc[p, 'false_alarm_rate'], '.2f')}"
                for p in pops
            ]
            log(f"  {det:<31}" + "".join(f"{c:>36}" for c in cells))
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
        f"honest variants paper / unseen / lr3x x {r} replicates, {s['finetune_epochs']} epochs; "
        f"attacks FA, PAA on 5 % and 50 % of class 1 -> 7 x {r} replicates, "
        f"{'/'.join(map(str, s['attack_epochs']))} epochs; AE 128-32, {s['ae_epochs']} epochs",
    )
    roc = pd.read_csv(work / "results" / "model_level" / "roc.csv")
    roc_report(roc, log)
    det = pd.read_csv(work / "results" / "model_level" / "detection.csv")
    acc = det.groupby(["role", "variant", "attack", "fraction"], dropna=False)[
        ["accuracy", "attack_success"]
    ].mean()
    log("Mean test accuracy and attack success per population:")
    for idx, row in acc.iterrows():
        log(
            f"  {' '.join(str(i) for i in idx if i == i):<24} acc {100 * row['accuracy']:6.2f} %"
            f"  success {fmt(row['attack_success'] * 100, '.1f')} %"
        )
    log("")
    finish_benchmark(log, work, stage_of, STAGES, "collect_model_level", t_start)


if __name__ == "__main__":
    main()
