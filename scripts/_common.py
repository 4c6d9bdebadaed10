"""Shared by the thin scripts: make the package importable, log to the rule's log and stderr."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poisondetect.logs import run_logged  # noqa: E402

__all__ = ["run_logged", "cell_of", "logging"]


def cell_of(wildcards) -> dict:
    """The model-level grid cell of a job, from its wildcards."""
    return {
        "dataset": wildcards.dataset,
        "arch": wildcards.arch,
        "scenario": wildcards.scenario,
        "seed": int(wildcards.seed),
    }
