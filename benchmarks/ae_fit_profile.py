"""Benchmark: where one fit of a sample-level auto-encoder spends its time (issue 15).

Builds the fitting set of one ``--paper`` cell of ``sample_level_mnist.py`` with the workflow's own
code (``data.read_dataset``, ``rounds.make_rounds``, ``attacks.svm.poison``): MNIST 4 vs 0, 60
rounds of 100 / 200 / 200 points, a flipping attack with 10 poisons per round, the first 50 rounds
pooled (5,500 points of 784 features). Then fits RAE, CAE and MagNet once each with the paper's
settings (Adam lr 1e-3, batch 256, 33 % hold-out) and prints, per auto-encoder, seconds per epoch
(wall and CPU) and where they go:

- forward: the loss function on the training batches (the network's forward pass and the loss);
- backward: ``loss.backward()``;
- optimizer: ``zero_grad`` and Adam's ``step``;
- validation: the hold-out loss after every epoch;
- other: the rest of the epoch (shuffle, batch indexing, the Python loop, best-weight copies).

The full fit is extrapolated from the seconds per epoch to the paper's epochs (RAE 300, CAE 100,
MagNet 2 x 300), and so is the fitting work of the ``--paper`` run for the paper's detectors at
10 % (four attacks; CAE+, CAE, RAE, OD, MagNet, MagNet + reformer), on 2 cores running two
1-thread jobs at a time.

Every measurement runs in a fresh process with torch set to the thread count asked for (as the
workflow's jobs: ``OMP_NUM_THREADS`` before torch is imported). ``--compare REV`` also measures the
package of git revision ``REV`` of this repository (extracted with ``git archive`` into a temporary
directory) and prints the two side by side; ``--ops`` adds torch.profiler's top operators per
auto-encoder.

Usage (from the repository root)::

    .venv/bin/python benchmarks/ae_fit_profile.py --epochs 5                    # about 1 min
    .venv/bin/python benchmarks/ae_fit_profile.py --epochs 5 --threads 1,2 --compare 1c30ac6 --repeat 3
    .venv/bin/python benchmarks/ae_fit_profile.py --epochs 3 --ops --detectors rae

Times measured on shared cores vary with the other work on them: the CPU seconds are less
sensitive to being descheduled than the wall seconds, ``--repeat N`` keeps each fit's least-CPU
run of N, and the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_MNIST = (REPO / ".." / "shared" / "data" / "mnist").resolve()

PAPER_EPOCHS = {"rae": 300, "cae": 100, "magnet": 300}
PHASES = ("forward", "backward", "optimizer", "validation", "other")


# ------------------------------------------------------------------------------------ worker
def fitting_set(data: Path, seed: int, out: Path) -> int:
    """Write the pooled first 50 rounds of the --paper cell (flip, 10 poisons per 100 points) to
    ``out`` (``x``, ``y``); return the number of points. Each worker loads it with ``np.load``,
    as the workflow's fit job loads its cell's poisoned rounds."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from poisondetect.attacks.svm import poison
    from poisondetect.data import read_dataset
    from poisondetect.rounds import make_rounds
    from poisondetect.seeds import derive_seed

    ds = read_dataset("mnist", data)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    r = make_rounds(
        flat(ds.x_train),
        ds.y_train,
        flat(ds.x_test),
        ds.y_test,
        classes=(4, 0),
        n_rounds=60,
        n_train=100,
        n_val=200,
        n_test=200,
        seed=seed,
    )
    xs, ys = [], []
    for i in range(50):
        x, y, _, _ = poison(
            "flip",
            r.x_train[i],
            r.y_train[i],
            r.x_val[i],
            r.y_val[i],
            10,
            {"kernel": "linear", "C": 1.0},
            seed=derive_seed(seed, i),
        )
        xs.append(x), ys.append(y)
    np.savez(out, x=np.concatenate(xs), y=np.concatenate(ys))
    return sum(len(v) for v in ys)


class PhaseTimer:
    """Wall seconds per phase of every ``train_epochs`` call, by wrapping the loss function, the
    optimizer, ``evaluate_loss`` and ``Tensor.backward`` (the package itself is not changed)."""

    def __init__(self) -> None:
        self.runs: list[dict] = []
        self.in_validation = False

    def install(self) -> None:
        import torch

        import poisondetect.fitting as fitting

        timer = self
        orig_train, orig_eval = fitting.train_epochs, fitting.evaluate_loss
        orig_backward = torch.Tensor.backward

        def add(phase: str, t0: float) -> None:
            timer.runs[-1][phase] += time.perf_counter() - t0

        def train_epochs(model, loss_fn, tensors, *, make_optimizer, **kw):
            def timed_loss(*a):
                t0 = time.perf_counter()
                out = loss_fn(*a)
                if not timer.in_validation:
                    add("forward", t0)
                return out

            def timed_optimizer(params):
                opt = make_optimizer(params)
                for name in ("step", "zero_grad"):
                    f = getattr(opt, name)

                    def wrapped(_self, *a, _f=f, **k):
                        t0 = time.perf_counter()
                        out = _f(*a, **k)
                        add("optimizer", t0)
                        return out

                    # a bound method, as the LR scheduler expects of ``step``
                    setattr(opt, name, types.MethodType(wrapped, opt))
                return opt

            timer.runs.append({"desc": kw.get("desc", "fit"), **dict.fromkeys(PHASES, 0.0)})
            marks = [time.process_time()]  # CPU seconds at the start and after every epoch
            inner = kw.get("epoch_metrics")

            def mark(m):
                marks.append(time.process_time())
                return inner(m) if inner is not None else {}

            t0 = time.perf_counter()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            history = orig_train(
                model,
                timed_loss,
                tensors,
                make_optimizer=timed_optimizer,
                **{**kw, "epoch_metrics": mark},
            )
            run = timer.runs[-1]
            run["train_epochs_s"] = time.perf_counter() - t0
            run["cpu_s"] = time.process_time() - marks[0]
            run["page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            run["epochs"] = len(history)
            run["epoch_wall"] = [h["seconds"] for h in history]
            run["epoch_cpu"] = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
            run["epoch_s"] = sum(h["seconds"] for h in history)
            run["other"] = run["epoch_s"] - sum(run[p] for p in PHASES if p != "other")
            run["n_params"] = sum(p.numel() for p in model.parameters())
            return history

        def evaluate_loss(*a, **k):
            t0 = time.perf_counter()
            timer.in_validation = True
            try:
                return orig_eval(*a, **k)
            finally:
                timer.in_validation = False
                add("validation", t0)

        def backward(self_, *a, **k):
            t0 = time.perf_counter()
            out = orig_backward(self_, *a, **k)
            add("backward", t0)
            return out

        fitting.train_epochs, fitting.evaluate_loss = train_epochs, evaluate_loss
        torch.Tensor.backward = backward


def make_detectors(names: list[str], epochs: int | None) -> dict:
    from poisondetect.detectors.baselines import MagNet
    from poisondetect.detectors.cae import CAE, RAE

    def ep(name: str) -> int:
        return PAPER_EPOCHS[name] if epochs is None else epochs

    build = {
        "rae": lambda: RAE(epochs=ep("rae"), device="cpu"),
        "cae": lambda: CAE(epochs=ep("cae"), device="cpu"),
        "magnet": lambda: MagNet(epochs=ep("magnet"), device="cpu"),
    }
    return {n: build[n]() for n in names}


def worker(args: argparse.Namespace) -> None:
    """Fit each detector once in this process; print one JSON line of measurements."""
    sys.path.insert(0, str(args.root))
    import numpy as np
    import torch

    import poisondetect

    if not Path(poisondetect.__file__).resolve().is_relative_to(args.root.resolve()):
        raise SystemExit(f"imported {poisondetect.__file__}, not the package under {args.root}")
    torch.set_num_threads(args.threads)
    with np.load(args.fitset) as f:
        x, y = f["x"], f["y"]
    timer = PhaseTimer()
    timer.install()
    out = {"n_points": len(x), "threads": torch.get_num_threads(), "detectors": {}, "ops": {}}
    for name, det in make_detectors(args.detectors.split(","), args.epochs).items():
        first = len(timer.runs)
        c0, t0 = time.process_time(), time.perf_counter()
        if args.ops:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                det.fit(x, y)
            out["ops"][name] = prof.key_averages().table(
                sort_by="self_cpu_time_total", row_limit=args.ops_rows, max_name_column_width=48
            )
        else:
            det.fit(x, y)
        out["detectors"][name] = {
            "fit_s": time.perf_counter() - t0,
            "fit_cpu_s": time.process_time() - c0,
            "networks": timer.runs[first:],
        }
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------ parent
def run_worker(root: Path, threads: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--root",
        str(root),
        "--threads",
        str(threads),
        "--fitset",
        str(args.fitset),
        "--detectors",
        args.detectors,
        "--seed",
        str(args.seed),
        "--ops-rows",
        str(args.ops_rows),
    ]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    if args.ops:
        cmd.append("--ops")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"worker failed for {root} ({threads} threads), exit {proc.returncode}")
    return json.loads(lines[-1][len("RESULT ") :])


def extract_revision(rev: str, into: Path) -> Path:
    """The package of git revision ``rev`` of this repository, unpacked under ``into``."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "poisondetect"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def git_head() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def steady(values: list[float]) -> float:
    """Mean seconds of an epoch after the first (which also pays one-time costs: the first
    kernel calls, setting up the loop), or of the one epoch there is."""
    rest = values[1:] or values
    return sum(rest) / max(len(rest), 1)


def per_epoch(net: dict) -> dict:
    """Steady wall and CPU seconds per epoch."""
    return {"epoch_s": steady(net["epoch_wall"]), "cpu_s": steady(net["epoch_cpu"])}


def network_label(det: str, i: int, n: int) -> str:
    if det == "magnet":
        return f"magnet AE{i + 1} ({('conv_avgpool', 'conv_nopool')[i]})" if n == 2 else "magnet"
    return {"rae": "RAE (conv)", "cae": "CAE (conv + head)"}[det]


def fit_estimate(res: dict, clock: str) -> dict[str, float]:
    """Seconds of one fit of each detector at the paper's epochs, from the measured epochs:
    ``clock`` "wall" or "cpu" (the process's CPU seconds: a 1-thread fit's wall time on a core of
    its own, however busy the machine was)."""
    est = {}
    for det, d in res["detectors"].items():
        nets = d["networks"]
        key, total = ("epoch_s", d["fit_s"]) if clock == "wall" else ("cpu_s", d["fit_cpu_s"])
        per = [per_epoch(n)[key] for n in nets]
        # + what the fit spent besides steady epochs: building the nets, checking the data, the
        # first epoch's one-time costs, restoring the best weights
        setup = total - sum(p * n["epochs"] for p, n in zip(per, nets, strict=True))
        est[det] = sum(p * PAPER_EPOCHS[det] for p in per) + max(setup, 0.0)
    return est


def report(results: dict[str, dict[int, dict]], args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    from _bench import machine_lines

    labels = list(results)
    threads = sorted(next(iter(results.values())))
    print("=" * 100)
    print("poisondetect benchmark: one fit of each sample-level auto-encoder (issue 15)")
    print("=" * 100)
    for line in machine_lines():
        print(line)
    first = results[labels[0]][threads[0]]
    print(
        f"fitting set  : MNIST 4 vs 0, flip 10 %, first 50 of 60 rounds pooled: {first['n_points']}"
        f" points x 784; Adam lr 1e-3, batch 256, 33 % hold-out"
    )
    ep = "paper (RAE 300, CAE 100, MagNet 300)" if args.epochs is None else str(args.epochs)
    print(f"epochs run   : {ep}; code: {', '.join(f'{k} = {v}' for k, v in args.roots.items())}")
    print(f"repetitions  : {args.repeat} (each fit's least-CPU run shown)")
    print()
    print("Seconds per epoch after the first (wall; CPU in brackets):")
    head = f"  {'network':<26}" + "".join(f" {f'{lb} {t}t':>20}" for t in threads for lb in labels)
    print(head)
    dets = list(first["detectors"])
    for det in dets:
        nets = first["detectors"][det]["networks"]
        for i in range(len(nets)):
            row = f"  {network_label(det, i, len(nets)):<26}"
            for t in threads:
                for lb in labels:
                    n = results[lb][t]["detectors"][det]["networks"][i]
                    pe = per_epoch(n)
                    row += f" {pe['epoch_s']:>11.3f} ({pe['cpu_s']:>5.3f})"
            print(row)
    print()
    for lb in labels:
        for t in threads:
            res = results[lb][t]
            print(
                f"Breakdown per epoch, {lb}, {t} thread(s) (wall seconds and share of the epoch;"
                " means over all epochs, the first included):"
            )
            print(
                f"  {'network':<26} {'epoch':>7}"
                + "".join(f" {p:>17}" for p in PHASES)
                + f" {'page faults':>11}"
            )
            for det in dets:
                nets = res["detectors"][det]["networks"]
                for i, n in enumerate(nets):
                    k = max(n["epochs"], 1)
                    mean = n["epoch_s"] / k
                    cells = "".join(
                        f" {n[p] / k:>9.4f} ({100 * n[p] / n['epoch_s']:>4.1f} %)" for p in PHASES
                    )
                    print(
                        f"  {network_label(det, i, len(nets)):<26} {mean:>7.3f}{cells}"
                        f" {n['page_faults'] / k:>11.0f}"
                    )
            print()
    print("Extrapolated to the paper's epochs (one fit, seconds; wall / CPU):")
    print(f"  {'detector':<26}" + "".join(f" {f'{lb} {t}t':>20}" for t in threads for lb in labels))
    est = {
        (lb, t, c): fit_estimate(results[lb][t], c)
        for lb in labels
        for t in threads
        for c in ("wall", "cpu")
    }
    for det in dets:
        print(
            f"  {det:<26}"
            + "".join(
                f" {est[(lb, t, 'wall')][det]:>11.1f} / {est[(lb, t, 'cpu')][det]:>6.1f}"
                for t in threads
                for lb in labels
            )
        )
    if set(dets) >= {"rae", "cae", "magnet"} and 1 in threads:
        print()
        print(
            "Fitting work of the --paper run, paper's detectors at 10 % (4 attacks; per attack "
            "CAE+ = RAE + CAE, RAE, CAE, MagNet, MagNet + reformer = MagNet; OD ~ 0), from the "
            "1-thread CPU seconds, in minutes on 2 cores running two 1-thread jobs at a time "
            "(perfect packing, fits only):"
        )
        for lb in labels:
            e = est[(lb, 1, "cpu")]
            each = 2 * (e["rae"] + e["cae"]) + 2 * e["magnet"]
            shared = e["rae"] + e["cae"] + e["magnet"]
            print(
                f"  {lb:<10} every detector fits its own nets: {4 * each / 60:6.1f} core-min"
                f" -> {4 * each / 120:5.1f} min;  nets shared (RAE, CAE, MagNet once per attack):"
                f" {4 * shared / 60:6.1f} core-min -> {4 * shared / 120:5.1f} min"
            )
    for lb in labels:
        for t in threads:
            for det, table in results[lb][t]["ops"].items():
                print()
                print(f"torch.profiler, {lb}, {t} thread(s), {det} (all its epochs):")
                print(table)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=DEFAULT_MNIST, help="MNIST IDX directory")
    p.add_argument(
        "--epochs", type=int, help="epochs per auto-encoder (default: the paper's 300/100/300)"
    )
    p.add_argument("--detectors", default="rae,cae,magnet", help="comma list of rae, cae, magnet")
    p.add_argument("--threads", default="1", help="comma list of torch thread counts")
    p.add_argument("--compare", metavar="REV", help="also measure git revision REV (baseline)")
    p.add_argument("--ops", action="store_true", help="torch.profiler operator tables")
    p.add_argument("--ops-rows", type=int, default=15)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each setting N times (interleaved); keep each fit's least-CPU run",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    p.add_argument("--fitset", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = set(args.detectors.split(",")) - set(PAPER_EPOCHS)
    if bad:
        p.error(f"unknown detectors {sorted(bad)}; use rae, cae, magnet")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.threads = int(args.threads)
        worker(args)
        return
    if not args.data.exists():
        raise SystemExit(f"--data {args.data}: not found")
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="ae_fit_profile_") as tmp:
        args.fitset = Path(tmp) / "fitting_set.npz"
        fitting_set(args.data, args.seed, args.fitset)
        roots = {}
        if args.compare:
            roots["baseline"] = extract_revision(args.compare, Path(tmp) / "baseline")
        roots["current"] = REPO
        args.roots = {"baseline": f"git revision {args.compare}"} if args.compare else {}
        args.roots["current"] = f"this checkout ({git_head()})"
        results: dict[str, dict[int, dict]] = {lb: {} for lb in roots}
        for _ in range(args.repeat):
            for t in threads:  # interleaved, so that a change of load hits both alike
                for lb, root in roots.items():
                    results[lb][t] = least_cpu(results[lb].get(t), run_worker(root, t, args))
        report(results, args)


def least_cpu(kept: dict | None, new: dict) -> dict:
    """Per detector, the repetition whose fit took the least CPU time (the least disturbed)."""
    if kept is None:
        return new
    for det, d in new["detectors"].items():
        if d["fit_cpu_s"] < kept["detectors"][det]["fit_cpu_s"]:
            kept["detectors"][det] = d
            if det in new["ops"]:
                kept["ops"][det] = new["ops"][det]
    return kept


if __name__ == "__main__":
    main()
