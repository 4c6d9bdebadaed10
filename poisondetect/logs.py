"""Logging set-up for workflow jobs, their exit contract, and the conclusions printed at the end.

A job logs everything (INFO and above: per-epoch progress, timings, devices) to its rule's log file;
the terminal gets only warnings and errors, so that the console of a run shows Snakemake's progress
and, at the end, the conclusions (``print_conclusions``, from the Snakefile's ``onsuccess``).
``POISONDETECT_VERBOSE=1`` sends the INFO lines to the terminal too.

A job ends with the exit statuses of ``poisondetect.errors``: 2 and one ``ERROR`` line for an error
the user can cause (bad input, full disk, permissions), 1 with the traceback for anything else.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from poisondetect.errors import EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR, user_error_message

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
VERBOSE_ENV = "POISONDETECT_VERBOSE"

# Written by the collect stages: the conclusions of each part, printed at the end of a run.
CONCLUSION_FILES = (
    "results/model_level/conclusions.txt",
    "results/sample_level/conclusions.txt",
)
REPORT_HINT = (
    "Results in results/model_level/ and results/sample_level/; "
    "report: snakemake --report results/report.zip"
)


def verbose() -> bool:
    """Whether ``POISONDETECT_VERBOSE`` asks for the INFO lines on the terminal too."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    """INFO and above to ``log_file``; WARNING and above to stderr (everything when verbose)."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.NOTSET if verbose() else logging.WARNING)
    handlers: list[logging.Handler] = [console]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)


def run_logged(log_files: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one stage with logging to the job's log; bad input ends with its message, not a trace.

    The job first logs where it runs and on which device (``device=`` among ``kwargs``: a job that
    may use a GPU; none: a CPU job): torch and CUDA versions, the GPUs it sees and what the
    scheduler gave it. A job given a GPU that cannot use CUDA stops there, before any work.

    Exit status: an error the user can cause (``poisondetect.errors.user_error_message``: bad
    input, a full disk, no permission, ...) is one ERROR line (in the log and on the terminal) and
    exit status 2; any other exception is logged with its traceback and exits with status 1.
    """
    import socket

    from poisondetect.runtime import device_report

    log_file = log_files[0] if log_files else None
    setup_logging(log_file)
    log = logging.getLogger("poisondetect")
    job = os.environ.get("SLURM_JOB_ID")
    log.info(
        "running on %s%s; poisondetect from %s",
        socket.gethostname(),
        f" in SLURM job {job}" if job else "",
        Path(__file__).resolve().parent,
    )
    try:
        log.info("%s", device_report(kwargs.get("device")))
        return func(*args, **kwargs)
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            log.exception("job failed with an internal error (a bug: please report it)")
            sys.exit(EXIT_INTERNAL_ERROR)
        log.error("%s", message)
        sys.exit(EXIT_BAD_INPUT)


def conclusions(files: tuple[str, ...] = CONCLUSION_FILES, root: str | Path = ".") -> str:
    """The "Conclusions" block of a finished run: the lines of every conclusions file that exists
    (under ``root``), then where the results and the report are."""
    parts = []
    for name in files:
        path = Path(root) / name
        if path.is_file():
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            parts.append(f"{name}:")
            parts += [f"  {ln}" for ln in lines]
    head = "Conclusions" if parts else "No conclusions file was written by this run"
    return "\n".join([head, *parts, REPORT_HINT])


def print_conclusions(root: str | Path = ".") -> None:
    """Print ``conclusions()`` to stdout (the Snakefile's ``onsuccess`` handler)."""
    print(conclusions(root=root), flush=True)
