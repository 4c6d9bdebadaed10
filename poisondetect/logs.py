"""Logging set-up for workflow jobs: the rule's log file and stderr get the same lines."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from poisondetect.errors import PoisonDetectError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)


def run_logged(log_files: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one stage with logging to the job's log; bad input ends with its message, not a trace."""
    import os
    import socket

    log_file = log_files[0] if log_files else None
    setup_logging(log_file)
    job = os.environ.get("SLURM_JOB_ID")
    logging.getLogger("poisondetect").info(
        "running on %s%s", socket.gethostname(), f" in SLURM job {job}" if job else ""
    )
    try:
        return func(*args, **kwargs)
    except PoisonDetectError as e:
        logging.getLogger("poisondetect").error("%s", e)
        sys.exit(1)
    except Exception:
        logging.getLogger("poisondetect").exception("job failed")
        raise
