"""Metrics of poison filters (precision / recall / F1 / AUROC of the poisoned class) and of models."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from poisondetect.errors import PoisonDetectError


def _mask(a: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(a)
    if m.ndim != 1:
        raise PoisonDetectError(f"{name} must be a 1-D mask, got shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise PoisonDetectError(
                f"{name} must be boolean (or 0/1), got values {np.unique(m)[:5]}"
            )
        m = m.astype(bool)
    return m


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def filter_metrics(
    is_poison: np.ndarray, flagged: np.ndarray, scores: np.ndarray | None = None
) -> dict[str, float | int]:
    """Detection quality with "poisoned" as the positive class.

    Returns ``precision``, ``recall``, ``f1`` (0.0 where undefined, e.g. nothing flagged or no
    poison, without warnings), ``auroc`` of ``scores`` (higher = more suspicious; NaN when
    ``scores`` is None or only one class is present), the counts ``tp``, ``fp``, ``fn``, ``tn``,
    and ``n_poison`` / ``n_flagged``.
    """
    truth, pred = _mask(is_poison, "is_poison"), _mask(flagged, "flagged")
    if truth.shape != pred.shape:
        raise PoisonDetectError(
            f"is_poison {truth.shape} and flagged {pred.shape} differ in length"
        )
    tp = int(np.sum(truth & pred))
    fp = int(np.sum(~truth & pred))
    fn = int(np.sum(truth & ~pred))
    tn = int(np.sum(~truth & ~pred))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    auroc = math.nan
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != truth.shape:
            raise PoisonDetectError(
                f"scores {s.shape} and is_poison {truth.shape} differ in length"
            )
        if not np.all(np.isfinite(s)):
            raise PoisonDetectError("scores contain NaN or infinite values")
        if 0 < truth.sum() < truth.size:
            auroc = float(roc_auc_score(truth, s))
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "n_poison": int(truth.sum()),
        "n_flagged": int(pred.sum()),
    }


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of equal labels (NaN for empty input)."""
    a, b = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if a.shape != b.shape:
        raise PoisonDetectError(f"y_true {a.shape} and y_pred {b.shape} differ in length")
    return float(np.mean(a == b)) if a.size else math.nan


def attack_success(y_pred: np.ndarray, target: int | np.ndarray) -> float:
    """Share of attacked inputs classified as the attacker wants (``target``: one label or one per
    input); NaN for empty input."""
    p = np.asarray(y_pred).ravel()
    try:
        t = np.broadcast_to(np.asarray(target), p.shape)
    except ValueError as err:
        raise PoisonDetectError(
            f"target must be one label or one per prediction ({p.size})"
        ) from err
    return float(np.mean(p == t)) if p.size else math.nan
