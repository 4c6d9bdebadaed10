"""Command line: ``python -m poisondetect audit --bundle B --model M``.

Prints every detector's score of a suspicious checkpoint on the bundle's trigger set, its
calibrated threshold, its rank among the honest fine-tunes (an empirical p-value) and the verdict,
naming the detectors the verdict comes from; and the paper's rule (mean reconstruction error
against Tr). Exit status: 0 not poisoned, 1 POISONED, 2 bad input. Checkpoints are read as
safetensors or weights-only state dicts; pickled code is refused.
"""

from __future__ import annotations

import argparse
import json
import sys

from poisondetect.errors import PoisonDetectError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m poisondetect", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser(
        "audit",
        help="decide whether a returned model was poisoned",
        description="Score a suspicious checkpoint with a detector bundle "
        "(results/model_level/<dataset>/<arch>/<scenario>/seed<seed>/detector.safetensors).",
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
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def format_audit(r: dict) -> str:
    """The audit result as a table, one detector statistic a line, then the verdict."""
    lines = [
        f"model {r['model']}: {r['n_trigger']} trigger images; thresholds at a "
        f"{r['fpr'] * 100:g}% false-alarm rate of the honest fine-tunes",
        f"  {'detector':<32}{'score':>12}{'threshold':>12}{'p-value':>9}  flagged",
    ]
    for d in r["detectors"]:
        mark = "*" if d["detector"] in r["verdict_from"] else " "
        lines.append(
            f"{mark} {d['detector']:<32}{d['score']:>12.5g}{d['threshold']:>12.5g}"
            f"{d['pvalue']:>9.3f}  {'yes' if d['flagged'] else 'no'}"
        )
    if "paper" in r:
        p = r["paper"]
        lines.append(
            f"paper's rule: mean reconstruction error {p['mean_error']:.6g} "
            f"{'>' if p['flagged'] else '<='} Tr {p['threshold']:.6g} -> "
            f"{'poisoned' if p['flagged'] else 'not poisoned'}"
        )
    by = ", ".join(r["flagged_by"]) or "none of them flags"
    lines.append(f"{r['verdict']} (verdict from {', '.join(r['verdict_from'])}, marked *: {by})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "audit":
        from poisondetect.model_level import audit

        try:
            result = audit(args.bundle, args.model, args.data, args.device, arch=args.arch)
        except PoisonDetectError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(format_audit(result))
        return 1 if result["flagged"] else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
