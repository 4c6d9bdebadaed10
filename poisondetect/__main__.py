"""Command line: ``poisondetect audit --bundle B --model M``, ``poisondetect filter --data D``, and
``poisondetect run [SNAKEMAKE OPTIONS]`` (the workflow, every ``--configfile`` checked first).

``audit``: prints every detector's score of a suspicious checkpoint on the bundle's trigger set, its
calibrated threshold, its rank among the honest fine-tunes (an empirical p-value) and the verdict,
naming the detectors the verdict comes from; and, on a line of its own, the paper's rule (mean
reconstruction error against its own threshold Tr). Checkpoints are read as safetensors or
weights-only state dicts; pickled code is refused.

``filter`` fits a sample-level detector (CAE+ by default, any registered one by name, with the
config's settings) on a training set, writes a per-point CSV (index, label, scores, flag) and
prints a summary.

Exit status (both commands; ``poisondetect.errors``): 0 success (``audit``: not poisoned); 1
internal error, printed with its traceback (a bug); 2 bad input, one ``error: ...`` line on stderr
(bad, oversized or unreadable files, configs and checkpoints, a full disk, no permission); 3
``audit`` flagged the model POISONED. Inputs are read within size limits (``--limit KEY=VALUE``,
the config's ``limits`` block, or ``POISONDETECT_LIMITS``; see ``poisondetect.limits``).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from poisondetect.errors import (
    EXIT_BAD_INPUT,
    EXIT_CODES_HELP,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_POISONED,
    user_error_message,
)
from poisondetect.names import SAMPLE_DETECTOR_ARCHS

LIMIT_HELP = (
    "raise or lower a bound on what is read, KEY=VALUE (repeatable): max_file_mb, "
    "max_uncompressed_mb, max_members, max_image_pixels (defaults 256, 256, 250000, 16777216; "
    "also the config's limits block and the POISONDETECT_LIMITS environment variable)"
)


def version() -> str:
    """The installed distribution's version, else the package's own ``__version__``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("poisondetect")
    except PackageNotFoundError:
        from poisondetect import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="poisondetect",
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_CODES_HELP,
        formatter_class=raw,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run",
        help="run the Snakemake workflow after checking every --configfile (see run --help)",
        add_help=False,
    )
    a = sub.add_parser(
        "audit",
        help="decide whether a returned model was poisoned",
        description="Score a suspicious checkpoint with a detector bundle "
        "(results/model_level/<dataset>/<arch>/<scenario>/seed<seed>/detector.safetensors).",
        epilog=EXIT_CODES_HELP,
        formatter_class=raw,
    )
    a.add_argument(
        "--bundle", required=True, help="detector bundle (.safetensors) from the workflow"
    )
    a.add_argument(
        "--model",
        required=True,
        help="suspicious checkpoint: .safetensors, or a weights-only .pt/.pth state dict",
    )
    a.add_argument(
        "--data",
        default=None,
        help="prepared data set (.npz) holding the trigger set; default: the path saved in the bundle",
    )
    a.add_argument(
        "--arch",
        default=None,
        help="architecture, when the checkpoint carries no metadata (default: the genuine model's)",
    )
    a.add_argument(
        "--expect-digest",
        default=None,
        metavar="HEX",
        help="the bundle's digest as your own run recorded it (results/model_level/bundles.csv); "
        "default: that bundles.csv when it lies above the bundle, else none, and then integrity "
        "is checked against the file itself only (a bundle edited and re-digested passes that)",
    )
    _device_and_json(a)
    f = sub.add_parser(
        "filter",
        help="find the poisoned points of a training set",
        description="Fit a sample-level detector on a training set and flag its suspicious points "
        "(the workflow's detector classes and config blocks).",
        epilog=EXIT_CODES_HELP,
        formatter_class=raw,
    )
    f.add_argument(
        "--data",
        required=True,
        help="training set: an .npz with x (N, D) or (N, C, H, W) in [0, 1] and y (two classes; "
        "optional is_poison for a score), or an image folder / tar archive with two classes",
    )
    f.add_argument("--out", required=True, help="per-point CSV to write")
    f.add_argument("--detector", default="cae_plus", help="registered detector (default cae_plus)")
    f.add_argument(
        "--config",
        default=None,
        help="workflow config whose sample_level.<detector> and autoencoders settings are used "
        "(default: the schema's defaults)",
    )
    f.add_argument("--task", default=None, help="sample_level task whose detector_arch is used")
    f.add_argument(
        "--arch",
        default=None,
        choices=SAMPLE_DETECTOR_ARCHS,
        help="auto-encoder architecture (default: the task's, else conv for images, dense otherwise)",
    )
    f.add_argument("--seed", type=int, default=0)
    _device_and_json(f)
    return p


def format_audit(r: dict) -> str:
    """The audit result: the bundle's digest and what it was checked against, one line per
    detector statistic with its calibrated threshold, the calibrated verdict with its p-value and
    the false-alarm rate its calibration guarantees, and the paper's rule on a line of its own."""
    w = max(len(d["detector"]) for d in r["detectors"]) + 2  # the name column fits the longest
    lines = [
        f"model {r['model']}: {r['n_trigger']} trigger images",
        f"detector bundle digest {r['bundle_digest']}: {r['integrity']}",
        f"  {'detector':<{w}}{'score':>12}{'threshold':>12}{'p-value':>9}  flagged",
    ]
    for d in r["detectors"]:
        mark = "*" if d["detector"] in r["verdict_from"] else " "
        lines.append(
            f"{mark} {d['detector']:<{w}}{d['score']:>12.5g}{d['threshold']:>12.5g}"
            f"{d['pvalue']:>9.3f}  {'yes' if d['flagged'] else 'no'}"
        )
    fisher = r.get("combine") == "fisher"
    on = "unusual" if fisher else "most extreme"
    by = f"; {on} on: {', '.join(r['flagged_by'])}" if r["flagged_by"] else ""
    how = "Fisher's sum over" if fisher else "the smallest p-value of"
    lines.append(
        f"calibrated verdict: {r['verdict']} (one test, {how} the statistics marked *: p-value "
        f"{r['verdict_pvalue']:.3f} among {r['n_honest']} honest models{by})"
    )
    rate = (
        f"false-alarm rate this calibration guarantees: {r['guaranteed_fpr'] * 100:.3g}% "
        f"(requested {r['fpr'] * 100:g}%"
    )
    if r["fpr_reachable"]:
        rate += ")"
    else:
        rate += (
            f", out of reach with {r['n_honest']} honest models: {r['replicates_needed']} are "
            "needed; add sampled honest fine-tunes, model_level.finetune.sampled.replicates)"
        )
    lines.append(rate)
    lines.append(
        "  (on average over draws of honest models like the calibration's; one draw's rate "
        "varies, and honest recipes unlike the sampled null's are not covered: README, "
        "Calibration)"
    )
    if "paper" in r:
        p = r["paper"]
        lines.append(
            f"paper's rule ({p['statistic']}, its own threshold Tr, not calibrated): score "
            f"{p['score']:.6g} {'>' if p['flagged'] else '<='} Tr {p['threshold']:.6g} -> "
            f"{'poisoned' if p['flagged'] else 'not poisoned'}"
        )
    return "\n".join(lines)


def _device_and_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE", help=LIMIT_HELP)


def _audit(args: argparse.Namespace) -> tuple[dict, str, int]:
    from poisondetect.limits import configured_limits, set_limits

    set_limits(configured_limits(None, args.limit))
    from poisondetect.model_level.audit import audit

    result = audit(
        args.bundle,
        args.model,
        args.data,
        args.device,
        arch=args.arch,
        expect_digest=args.expect_digest,
    )
    return result, format_audit(result), EXIT_POISONED if result["flagged"] else EXIT_OK


def _filter(args: argparse.Namespace) -> tuple[dict, str, int]:
    from poisondetect.filtering import run_filter

    result = run_filter(
        args.data,
        args.out,
        detector=args.detector,
        config=args.config,
        task=args.task,
        arch=args.arch,
        seed=args.seed,
        device=args.device,
        limit_overrides=args.limit,
    )
    return result, result.pop("message"), EXIT_OK


RUN_HELP = """usage: poisondetect run [SNAKEMAKE OPTIONS ...]

Run the Snakemake workflow (python -m snakemake with the options given) after reading every
--configfile / --configfiles file as poisondetect reads configs: a regular file of at most 1 MB,
UTF-8, YAML without aliases. Snakemake reads a --configfile itself before the workflow starts, so
a bad one would give Snakemake's traceback; here it gives one "error: ..." line naming the file
and exit status 2. Example: poisondetect run --cores all --configfile configs/paper-mnist.yaml"""


def configfiles_of(argv: list[str]) -> list[str]:
    """The files of every ``--configfile`` / ``--configfiles`` option of a Snakemake command line
    (``--configfile A B``, ``--configfile=A``)."""
    files, taking = [], False
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in ("--configfile", "--configfiles"):
            taking = not eq
            if eq:
                files.append(value)
        elif arg.startswith("-"):
            taking = False
        elif taking:
            files.append(arg)
    return files


def run_workflow(argv: list[str]) -> int:
    """``poisondetect run``: check every --configfile, then replace this process by Snakemake's."""
    import os

    from poisondetect.config import read_config_file

    if argv[:1] in (["-h"], ["--help"]):
        print(RUN_HELP)
        return EXIT_OK
    try:
        for path in configfiles_of(argv):
            read_config_file(path, label=f"--configfile {path}")
    except Exception as e:
        text = user_error_message(e)
        if text is None:
            raise
        print(f"error: {text}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "snakemake", *argv])
    return EXIT_INTERNAL_ERROR  # not reached


def main(argv: list[str] | None = None) -> int:
    """Run a command; return its exit status (module docstring; ``poisondetect.errors``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # Snakemake's own options follow: not parsed here
        return run_workflow(argv[1:])
    args = _parser().parse_args(argv)  # a usage error exits with 2, as bad input
    command = {"audit": _audit, "filter": _filter}[args.command]
    try:
        result, message, status = command(args)
        print(json.dumps(result, indent=2) if args.json else message)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        text = user_error_message(e)
        if text is None:
            traceback.print_exc()
            print(
                f"internal error in poisondetect {version()} (a bug: please report it with the "
                "traceback above)",
                file=sys.stderr,
            )
            return EXIT_INTERNAL_ERROR
        print(f"error: {text}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return status


if __name__ == "__main__":
    sys.exit(main())
