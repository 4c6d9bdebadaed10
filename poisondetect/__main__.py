"""Command line: ``python -m poisondetect audit --bundle B --model M``.

Prints the verdict for a suspicious checkpoint: the mean reconstruction error of its penultimate
activations on the detector's trigger set, against the threshold saved in the detector bundle.
Checkpoints are read as safetensors or weights-only state dicts; pickled code is refused.
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
            print(
                f"{result['verdict']}: mean reconstruction error {result['mean_error']:.6g} "
                f"{'>' if result['flagged'] else '<='} threshold {result['threshold']:.6g} "
                f"({result['n_trigger']} trigger images, model {result['model']})"
            )
        return 1 if result["flagged"] else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
