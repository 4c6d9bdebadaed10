"""Where a job runs and how it reports: device choice, deterministic kernels, progress bars.

One small, neutral module used by the classifier training loop and by every detector, so none of
them imports another's module just for the device.
"""

from __future__ import annotations

import os
import sys

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when available (and not refused), else the CPU: one code path for laptop and cluster."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        from poisondetect.errors import PoisonDetectError

        raise PoisonDetectError(
            "device: cuda was requested but this job sees no CUDA GPU; use device: auto "
            "(or request a GPU from the scheduler)"
        )
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def deterministic_cuda() -> None:
    """Ask for deterministic CUDA kernels (warn only where none exists).

    Only called for CUDA runs: the CPU kernels used here are deterministic already, and the switch
    imports torch's compiler stack (about 6 s per job on a small CPU machine).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def progress(iterable, total: int, desc: str):
    """A tqdm bar only where a terminal is attached; plain iteration in logs and batch jobs."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False)
    return iterable
