"""The one exception type for bad input: its message names the problem and how to fix it."""

from __future__ import annotations

from typing import Any

import numpy as np


class PoisonDetectError(ValueError):
    """Raised for bad input (config, data, checkpoints, cached files) with an actionable message."""


def count_nonfinite(values: Any) -> tuple[int, int]:
    """``(rows holding a NaN or an infinity, rows)`` of an array or tensor (rows = first axis).

    A 0-d value counts as one row. Integer and boolean values are always finite.
    """
    if hasattr(values, "detach"):  # a torch tensor: count without a copy to numpy
        import torch

        t = values.detach()
        if not (t.is_floating_point() or t.is_complex()):
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
