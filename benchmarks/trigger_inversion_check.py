"""Check: trigger inversion (Neural Cleanse and the differential variant) on real MNIST backdoors.

Trains the paper's CNN (width 0.5 by default) on a stratified subset of the MNIST training set
(the genuine model M), fine-tunes it honestly (``--honest`` replicates, each with its own seed)
and with the pattern-addition attack (a 5x5 white square at a random position on 5 % and 50 % of
class 1, relabelled 7; ``poisondetect.attacks.registry.apply_attack``), then runs both detectors on
every model on a stratified subset of the MNIST test set. Prints, per model, the test accuracy
and the attack success on patched test images of class 1; then, per detector variant
(``--variant LABEL=DETECTOR:key=value,...``, side by side: the defaults of an earlier release
against today's), every model's statistics, the suspected (source, target) pair, the wall and CPU
seconds per model, and the AUROC of honest fine-tunes against each attack fraction (the score
statistic); the cost per model of each variant on a randomly initialised CNN; and the machine.

Usage (from the repository root)::

    .venv/bin/python benchmarks/trigger_inversion_check.py                   # about 10 min, 2 cores
    .venv/bin/python benchmarks/trigger_inversion_check.py --timing-only
    .venv/bin/python benchmarks/trigger_inversion_check.py --max-train 8000 --honest 3
    .venv/bin/python benchmarks/trigger_inversion_check.py --honest 6 --attack-replicates 3 \
        --models /tmp/ti-models --variant old-dti=differential_trigger_inversion:reference_mode=joint

Models are trained in this process unless ``--models DIR`` holds their checkpoints from an
earlier run (they are saved there otherwise); every random choice is seeded.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import DEFAULT_MNIST, Report, machine_lines  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_MNIST, help="MNIST IDX directory")
    ap.add_argument("--max-train", type=int, default=4000, help="training images (stratified)")
    ap.add_argument("--trigger", type=int, default=1000, help="test images given to detectors")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--genuine-epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--honest", type=int, default=2, help="honest fine-tunes (seeds)")
    ap.add_argument(
        "--attack-replicates", type=int, default=1, help="attacked fine-tunes per fraction (seeds)"
    )
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.5])
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--timing-only", action="store_true", help="only the random-weight timing")
    ap.add_argument(
        "--no-random-timing",
        action="store_true",
        help="skip the random-weight timing (an untrained CNN has no trigger to converge on: "
        "every arm runs every step)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--models",
        type=Path,
        default=None,
        help="folder of checkpoints: models found there are loaded, the others trained and saved",
    )
    ap.add_argument(
        "--detectors",
        nargs="+",
        default=["trigger_inversion", "differential_trigger_inversion"],
        help="registered detectors to run with today's defaults (and --param)",
    )
    ap.add_argument("--param", nargs="*", default=[], help="detector parameters, key=value (YAML)")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=DETECTOR:key=value,...",
        help="a further detector variant to run beside them (repeatable), e.g. the earlier "
        "defaults: old-dti=differential_trigger_inversion:reference_mode=joint",
    )
    args = ap.parse_args()

    import torch
    import yaml

    from poisondetect.attacks.labels import paste_pattern
    from poisondetect.attacks.registry import apply_attack
    from poisondetect.checkpoints import load_checkpoint, save_checkpoint
    from poisondetect.classifiers import accuracy, train_model
    from poisondetect.data import read_dataset
    from poisondetect.detectors import registry
    from poisondetect.detectors.model_level import ModelRecord
    from poisondetect.detectors.trigger_inversion import TriggerInversion
    from poisondetect.metrics import auroc
    from poisondetect.models import build_model
    from poisondetect.runtime import pick_device
    from poisondetect.seeds import derive_seed, stratified_subset

    torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    log = Report()
    log("=" * 100)
    log("poisondetect check: trigger inversion (Neural Cleanse, differential) on MNIST")
    log("=" * 100)
    for line in machine_lines():
        log(line)
    log(f"torch threads: {torch.get_num_threads()}, device {dev}")
    log(f"settings     : {vars(args)}")
    params = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in args.param)}
    log(f"detector defaults: {TriggerInversion().get_params()}")
    log(f"parameters set  : {params}")

    variants = {name: (name, params) for name in args.detectors}
    for v in args.variant:
        label, _, rest = v.partition("=")
        name, _, kv = rest.partition(":")
        extra = {k: yaml.safe_load(x) for k, x in (p.split("=", 1) for p in kv.split(",") if p)}
        variants[label] = (name, {**params, **extra})
    log(f"variants     : {variants}")

    def detector(label):
        name, ps = variants[label]
        return registry.build("model", name, ps, device=args.device, seed=args.seed)

    log("")

    def build():
        return build_model("cnn", in_channels=1, num_classes=10, image_size=28, width=args.width)

    # -- timing on random weights ------------------------------------------------------------
    rng = np.random.default_rng(args.seed)
    x_rand = rng.random((args.trigger, 1, 28, 28), dtype=np.float32)
    y_rand = np.arange(args.trigger) % 10
    torch.manual_seed(args.seed)
    rand_net = build().eval()
    rand_ref = build().eval()
    genuine = ModelRecord("genuine", y_rand, y_rand, network=rand_ref, images=x_rand)
    suspect = ModelRecord("random", y_rand, y_rand, network=rand_net, images=x_rand)
    log("Cost per model, randomly initialised CNN, random 28x28 images:")
    for name in [] if args.no_random_timing else variants:
        det = detector(name).fit(genuine)
        t0, c0 = time.perf_counter(), time.process_time()
        det.statistics([suspect])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        log(f"  {name:<32} {wall:6.1f} s per model (CPU time of this process {cpu:6.1f} s)")
    log(f"  load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    log("")
    if args.timing_only:
        return

    # -- models --------------------------------------------------------------------------------
    if not args.data.exists():
        raise SystemExit(f"--data {args.data}: not found (the MNIST IDX directory)")
    ds = read_dataset("mnist", args.data)
    tr = stratified_subset(ds.y_train, args.max_train, derive_seed(args.seed, 1))
    x, y = ds.x_train[tr], ds.y_train[tr]
    te = stratified_subset(ds.y_test, args.trigger, derive_seed(args.seed, 2))
    xt, yt = ds.x_test[te], ds.y_test[te]
    ones = ds.y_test == 1
    patched_ones = paste_pattern(ds.x_test[ones], 5, 1.0, np.random.default_rng(derive_seed(0, 3)))

    def describe(name, net, seconds):
        acc = accuracy(net, ds.x_test, ds.y_test, device=dev)
        asr = float(np.mean(accuracy(net, patched_ones, np.full(ones.sum(), 7), device=dev)))
        log(
            f"  {name:<14} test accuracy {acc:.4f}, class-1 patched -> 7: {asr:.3f} ({seconds:.0f} s)"
        )

    fit = {"optimizer": "adam", "batch_size": 64, "weight_decay": 0.0, "device": dev}
    spec = {"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 28}
    spec["width"] = args.width
    if args.models:
        args.models.mkdir(parents=True, exist_ok=True)

    def trained(name, start, xs, ys, epochs, lr, seed):
        """The model ``name``: loaded from --models, or trained from ``start`` (and saved)."""
        path = args.models / f"{name}.safetensors" if args.models else None
        t0 = time.perf_counter()
        if path is not None and path.exists():
            net, _ = load_checkpoint(path, device=dev, **spec)
        else:
            net = copy.deepcopy(start).to(dev)
            train_model(net, xs, ys, epochs=epochs, lr=lr, seed=seed, **fit)
            if path is not None:
                save_checkpoint(net, path, {**spec, "settings": vars(args)})
        describe(name, net.eval(), time.perf_counter() - t0)
        return net.eval()

    torch.manual_seed(args.seed)
    log(f"Models (CNN width {args.width}, {len(y)} MNIST training images, Adam):")
    m = trained("genuine", build(), x, y, args.genuine_epochs, 1e-3, args.seed)
    models = {}

    def finetune(name, xs, ys, seed):
        models[name] = trained(name, m, xs, ys, args.finetune_epochs, 3e-4, seed)

    for r in range(args.honest):
        finetune(f"honest_r{r}", x, y, derive_seed(args.seed, 10, r))
    for f in args.fractions:
        for r in range(args.attack_replicates):
            att = apply_attack(
                "pattern",
                x,
                y,
                target_class=1,
                attacker_class=7,
                fraction=f,
                pattern_size=5,
                pattern_value=1.0,
                seed=derive_seed(args.seed, 20, r) if r else derive_seed(args.seed, 20),
            )
            name = f"pattern_{int(round(100 * f))}pct" + (f"_r{r}" if r else "")
            finetune(name, att.x, att.y, derive_seed(args.seed, 10, r))
    log("")

    # -- detectors -----------------------------------------------------------------------------
    genuine = ModelRecord("genuine", yt, yt, network=m, images=xt)
    records = [genuine] + [ModelRecord(n, yt, yt, network=v, images=xt) for n, v in models.items()]
    summary = []
    for name in variants:
        t0 = time.perf_counter()
        det = detector(name).fit(genuine)
        fit_s = time.perf_counter() - t0
        log(f"{name} {variants[name]} (fit on M {fit_s:.1f} s; higher = more suspicious):")
        log(f"  {'model':<16} {'score':>7} {'anomaly':>8} {'small':>6} {'wall s':>7} {'CPU s':>7}")
        scores, walls, cpus = {}, [], []
        for rec in records:
            t0, c0 = time.perf_counter(), time.process_time()
            st = {k: float(v[0]) for k, v in det.statistics([rec]).items()}
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            scores[rec.name] = st["score"]
            if rec.name != "genuine":
                walls.append(wall)
                cpus.append(cpu)
            log(
                f"  {rec.name:<16} {st['score']:7.3f} {st['anomaly_index']:8.2f} "
                f"{st['small_trigger']:6.3f} {wall:7.1f} {cpu:7.1f}"
            )
        honest = [v for k, v in scores.items() if k.startswith("honest")]
        row = f"{name:<24} {np.mean(walls):6.1f} s {np.mean(cpus):6.1f} s"
        for f in args.fractions:
            pos = [
                v for k, v in scores.items() if k.startswith(f"pattern_{int(round(100 * f))}pct")
            ]
            row += f"  PAA {100 * f:g}%: AUROC {auroc(honest, pos):.2f} (min {min(pos):.3f})"
        row += f"  honest max {max(honest):.3f}"
        summary.append(row)
        log("")
    log(f"Summary ({args.honest} honest, {args.attack_replicates} attacked per fraction; mean wall")
    log("and CPU seconds per model; AUROC honest vs attacked on the score statistic):")
    for row in summary:
        log("  " + row)
    log(f"  load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
