"""Shared by the thin scripts: make the package importable, log to the rule's log and stderr."""

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# One job, its own cores: torch and BLAS use the rule's `threads` (1 unless the rule says
# otherwise), so parallel jobs do not oversubscribe the CPU. Set before torch is imported.
_threads = str(max(1, int(sys.modules["__main__"].snakemake.threads)))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = _threads

from poisondetect.logs import run_logged  # noqa: E402

__all__ = ["run_logged", "cell_of", "by_model", "logging"]


def cell_of(wildcards) -> dict:
    """The model-level grid cell of a job, from its wildcards."""
    return {
        "dataset": wildcards.dataset,
        "arch": wildcards.arch,
        "scenario": wildcards.scenario,
        "seed": int(wildcards.seed),
    }


def by_model(paths) -> dict[str, str]:
    """A cell's per-model files keyed by model name (the file name without its suffix)."""
    return {Path(p).stem: p for p in paths}
