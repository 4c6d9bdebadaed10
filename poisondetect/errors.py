"""The one exception type for bad input, and the exit contract of every command and job.

``PoisonDetectError``'s message names the problem and how to fix it. Every command (``audit``,
``filter``) and every workflow job ends with one of these exit statuses:

- 0: success (``audit``: the model is not flagged);
- 1: internal error: an unexpected exception, printed with its traceback (a bug: please report it);
- 2: bad input: one ``error: ...`` line naming the file or key and what to do. Errors a user can
  cause are mapped here: ``PoisonDetectError`` (bad files, configs, checkpoints), and the system's
  errors of the machine rather than the code (full disk, exceeded quota, file-size limit, no
  permission, read-only file system, a missing file), also when safetensors reports them;
- 3: ``audit`` only: the model is flagged POISONED (a status no crash produces).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_POISONED = 3

EXIT_CODES_HELP = """exit status:
  0  success (audit: the model is not flagged)
  1  internal error: an unexpected exception, printed with its traceback (a bug; please report it)
  2  bad input: one "error: ..." line naming the file or setting and what to do (bad or oversized
     files, configs, checkpoints; a full disk, no permission, a read-only file system)
  3  audit: the model is flagged POISONED"""


class PoisonDetectError(ValueError):
    """Raised for bad input (config, data, checkpoints, cached files) with an actionable message."""


_DISK = (
    "free space or ask for more quota (check with df -h / your site's quota command), or move the "
    "results directory to a larger file system, then rerun"
)
# Errors of the machine, not of the code: what happened and what to do (one line, no traceback).
_OS_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", _DISK),
    errno.EDQUOT: ("disk quota exceeded", _DISK),
    errno.EFBIG: (
        "file too large (the file system's or the shell's file-size limit, ulimit -f)",
        "raise the limit or write to another file system, then rerun",
    ),
    errno.EACCES: (
        "permission denied",
        "check the permissions of the file and its folder (ls -l) or use a path you may access",
    ),
    errno.EPERM: (
        "operation not permitted",
        "check the permissions of the file and its folder (ls -l) or use a path you may access",
    ),
    errno.EROFS: ("read-only file system", "write the results to a writable file system"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.ENOTDIR: ("a part of the path is not a directory", "check the path"),
    errno.EISDIR: ("is a directory, not a file", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
}
# Messages of errors that name a file only when they carry it (ENOENT without a file name is more
# likely a bug than a user's mistake).
_NEEDS_FILENAME = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}
_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# safetensors (Rust) reports I/O errors as its own type, e.g. "Error while serializing: I/O error:
# No space left on device (os error 28)" and sometimes ' at path "..."'
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)(?: at path \"([^\"]*)\")?")


EXCERPT_CHARS = 80


def short(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` on one line, cut to about ``limit`` characters (an excerpt of a value a user's file
    gave: a message never echoes a whole hostile value)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}... ({len(text):,} characters)"


def short_repr(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters (without building the repr of a huge
    container first: containers are summarised past a few items)."""
    if isinstance(value, (list, tuple, set, frozenset, dict)) and len(value) > 8:
        kind = type(value).__name__
        return f"<a {kind} of {len(value):,} items>"
    try:
        text = repr(value)
    except RecursionError:
        text = f"<a deeply nested {type(value).__name__}>"
    return short(text, limit)


def one_line(text: str) -> str:
    """``text`` on one line (a multi-line message's lines joined with spaces)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def os_error_message(code: int | None, filename: str | None = None) -> str | None:
    """One line for an error of the machine (full disk, permissions, ...); None for other codes."""
    if code not in _OS_ERRORS or (code in _NEEDS_FILENAME and not filename):
        return None
    what, fix = _OS_ERRORS[code]
    if code in _WRITES:
        where = f" while writing {filename}" if filename else ""
        return f"{what}{where}; {fix}"
    return f"{filename}: {what}; {fix}" if filename else f"{what}; {fix}"


def as_os_error(e: BaseException, filename: str | None = None) -> OSError | None:
    """The ``OSError`` inside a safetensors (Rust) I/O error, e.g. "No space left on device (os
    error 28)", naming ``filename`` where safetensors does not; None for any other error."""
    found = _RUST_OS_ERROR.search(str(e)) if type(e).__name__ == "SafetensorError" else None
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), filename or found.group(2))


def user_error_message(e: BaseException) -> str | None:
    """The one-line message of an error the user can cause and fix; None for anything else (a bug,
    which keeps its traceback and exit status 1)."""
    if isinstance(e, PoisonDetectError):
        return one_line(str(e))
    if isinstance(e, OSError):
        return os_error_message(e.errno, e.filename)
    inner = as_os_error(e)
    return None if inner is None else os_error_message(inner.errno, inner.filename)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn an error the user can cause into one ``error: ...`` line on stderr and exit status 2
    (for code run outside the commands and jobs, e.g. the Snakefile's start-up checks)."""
    try:
        yield
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def count_nonfinite(values: Any) -> tuple[int, int]:
    """``(rows holding a NaN or an infinity, rows)`` of an array or tensor (rows = first axis).

    A 0-d value counts as one row. Integer and boolean values are always finite.
    """
    if hasattr(values, "detach"):  # a torch tensor: count without a copy to numpy
        import torch

        t = values.detach()
        if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):  # nothing to count
            return 0, (t.shape[0] if t.ndim else 1)
        bad = ~torch.isfinite(t)
        if t.ndim > 1:
            bad = bad.reshape(t.shape[0], -1).any(dim=1)
        return int(bad.sum()), (t.shape[0] if t.ndim else 1)
    a = np.asarray(values)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating)):
        if a.dtype == object:
            a = a.astype(np.float64)
        else:
            return 0, (a.shape[0] if a.ndim else 1)
    if a.size == 0:  # an empty array (a zero-size dimension): nothing non-finite
        return 0, (a.shape[0] if a.ndim else 1)
    bad = ~np.isfinite(a)
    if a.ndim > 1:
        bad = bad.reshape(a.shape[0], -1).any(axis=1)
    return int(np.count_nonzero(bad)), (a.shape[0] if a.ndim else 1)


def require_finite(values: Any, what: str, hint: str, unit: str = "rows") -> Any:
    """Return ``values`` unchanged if every entry is finite, else raise ``PoisonDetectError``.

    The message says what was non-finite and on how many of the rows (first axis; ``unit`` names
    them, e.g. "trigger images"), then ``hint`` (what to do). Every comparison of a score with a
    threshold goes through this first: ``nan > threshold`` is False, so a NaN would otherwise read
    as a clean verdict (fail open).
    """
    bad, n = count_nonfinite(values)
    if bad:
        raise PoisonDetectError(f"{what}: NaN or infinite values on {bad} of {n} {unit}; {hint}")
    return values


NONFINITE_HINT = (
    "a model that drives its activations or reconstruction errors to NaN or infinity cannot be "
    "judged (never a clean verdict): treat it as unusable and get the intact weights from its sender"
)
