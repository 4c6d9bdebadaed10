"""Logging set-up for workflow jobs: the rule's log file and stderr get the same lines."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from poisondetect.errors import PoisonDetectError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Errors of the machine, not of the code: one line saying what to do, not a traceback.
_DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)


def disk_full_message(e: OSError) -> str | None:
    """One line for a full disk or an exceeded quota (None for any other OSError)."""
    what = _DISK_ERRNOS.get(e.errno)
    if what is None:
        return None
    where = f" while writing {e.filename}" if e.filename else ""
    return (
        f"{what}{where}; free space or ask for more quota (check with df -h / your site's quota "
        "command), or move the results directory to a larger file system, then rerun"
    )


def run_logged(log_files: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one stage with logging to the job's log; bad input ends with its message, not a trace.

    The job first logs where it runs and on which device (``device=`` among ``kwargs``: a job that
    may use a GPU; none: a CPU job): torch and CUDA versions, the GPUs it sees and what the
    scheduler gave it. A job given a GPU that cannot use CUDA stops there, before any work.
    """
    import os
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
    except PoisonDetectError as e:
        log.error("%s", e)
        sys.exit(1)
    except OSError as e:
        message = disk_full_message(e)
        if message is None:
            log.exception("job failed")
            raise
        log.error("%s", message)
        sys.exit(1)
    except Exception:
        log.exception("job failed")
        raise
