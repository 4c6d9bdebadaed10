"""Where a job runs and how it reports: device choice, deterministic kernels, progress bars, and
the C allocator setting that keeps training from page-faulting (``retain_freed_memory``).

One small, neutral module used by the classifier training loop and by every detector, so none of
them imports another's module just for the device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: a CPU job's start report does without it
    import torch


# Variables through which a scheduler or the user hands a job GPUs (SLURM sets the first ones for
# --gpus / --gres=gpu; CUDA_VISIBLE_DEVICES also by hand or by other schedulers).
GPU_ENV_VARS = (
    "SLURM_JOB_GPUS",
    "SLURM_STEP_GPUS",
    "SLURM_GPUS_ON_NODE",
    "SLURM_GPUS",
    "SLURM_GPUS_PER_NODE",
    "SLURM_GPUS_PER_TASK",
    "SLURM_TRES_PER_TASK",
    "CUDA_VISIBLE_DEVICES",
)


def scheduler_gpus(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The GPU variables of the environment that say this job was given a GPU ({} if none).

    Empty values, ``-1`` / ``NoDevFiles`` / ``none`` (no device) and a ``SLURM_TRES_PER_TASK``
    without ``gpu`` do not count.
    """
    env = os.environ if environ is None else environ
    found = {}
    for var in GPU_ENV_VARS:
        value = env.get(var, "").strip()
        if not value or value.lower() in ("-1", "nodevfiles", "none", "void"):
            continue
        if var != "CUDA_VISIBLE_DEVICES" and value == "0":  # a count of zero GPUs
            continue
        if var == "SLURM_TRES_PER_TASK" and "gpu" not in value:
            continue
        found[var] = value
    return found


def gpu_unusable_message(given: dict[str, str]) -> str:
    """One line: the job was given a GPU but torch sees no CUDA; the likely causes; the way out."""
    import torch

    build = torch.version.cuda
    causes = [
        'the container was started without --nv (Snakemake: --apptainer-args="--nv")',
        "the job landed on a node or partition without a working GPU, or the GPU is in a mode that "
        "refuses new processes",
    ]
    if build is None:
        causes.insert(0, f"this torch ({torch.__version__}) is a CPU-only build")
    else:
        causes.insert(
            0,
            f"the node's NVIDIA driver is too old for this torch ({torch.__version__}, built for "
            f"CUDA {build}; check nvidia-smi, or use an image built for an older CUDA)",
        )
    shown = ", ".join(f"{k}={v}" for k, v in given.items())
    return (
        f"this job was given a GPU ({shown}) but torch cannot use CUDA, so it would train on the "
        f"CPU for hours; likely causes: {'; '.join(causes)}. Fix the job, or set device: cpu in "
        "the config to run on the CPU on purpose"
    )


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when available (and not refused), else the CPU: one code path for laptop and cluster.

    Never a silent CPU fallback on a GPU job: with ``auto``, a job that the scheduler gave a GPU
    (its GPU variables, ``CUDA_VISIBLE_DEVICES``) but that cannot use CUDA stops with an error
    naming the likely causes; only ``device: cpu`` runs such a job on the CPU.
    """
    import torch

    from poisondetect.errors import PoisonDetectError

    if requested not in ("auto", "cpu", "cuda"):
        raise PoisonDetectError(f"device {requested!r} is not one of auto, cpu, cuda")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    given = scheduler_gpus()
    if given:
        raise PoisonDetectError(gpu_unusable_message(given))
    if requested == "cuda":
        raise PoisonDetectError(
            "device: cuda was requested but this job sees no CUDA GPU; use device: auto "
            "(or request a GPU from the scheduler)"
        )
    return torch.device("cpu")


def device_report(requested: str | None) -> str:
    """One line for the start of a job: the device it will use, torch and CUDA versions, the GPUs
    it sees and what the scheduler gave it. ``requested`` None = a CPU job (torch not imported)."""
    given = scheduler_gpus()
    sched = ", ".join(f"{k}={v}" for k, v in given.items()) or "none"
    if requested is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            tv = version("torch")
        except PackageNotFoundError:
            tv = "not installed"
        return f"device: cpu (CPU job); torch {tv}; scheduler GPU variables: {sched}"
    import torch

    dev = pick_device(requested)  # raises on a GPU job that cannot use CUDA
    n = torch.cuda.device_count() if dev.type == "cuda" else 0
    gpus = ", ".join(f"{i}: {torch.cuda.get_device_name(i)}" for i in range(n)) or "none"
    return (
        f"device: {dev} (requested {requested}); torch {torch.__version__}, built for CUDA "
        f"{torch.version.cuda or 'none (CPU-only build)'}; GPUs seen: {gpus}; scheduler GPU "
        f"variables: {sched}"
    )


def deterministic_cuda() -> None:
    """Ask for deterministic CUDA kernels (warn only where none exists).

    Only called for CUDA runs: the CPU kernels used here are deterministic already, and the switch
    imports torch's compiler stack (about 6 s per job on a small CPU machine).
    """
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def progress(iterable, total: int, desc: str):
    """A tqdm bar only where a terminal is attached; plain iteration in logs and batch jobs."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False)
    return iterable


# glibc mallopt parameters (malloc.h) and the values retain_freed_memory sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap
_TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it goes back
_allocator_tuned: bool | None = None


def retain_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc returns freed blocks of a few MiB to the kernel (``mmap`` / heap trimming),
    so every batch's fresh activation and gradient tensors fault in and zero new pages: for the
    sample-level auto-encoders (batch 256 of 28x28 images) about 1,800 page faults per training
    step, 15 % of its CPU time. With blocks up to 32 MiB served from the heap and up to 256 MiB of
    free heap kept, the same memory is reused from step to step. Only where freed memory goes
    changes (the process keeps its peak heap); the numbers are the same. Process-wide, done once;
    a no-op (False) where the C library has no ``mallopt`` (not glibc, not Linux).
    """
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _allocator_tuned = bool(
                mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            )
    return _allocator_tuned
