"""Movement-invariant per-class detectors: each compares every class with the same model's other
classes, relative to M's own per-class profile, before any comparison with the honest population.

An honest fine-tune, however far it moves M (more epochs, a larger learning rate, augmentation,
new data), moves every class; an attack moves one class (the target, towards the attacker's
class) much more than the others. Each score is the largest per-class change divided by the
median per-class change of the same model: a uniform change, however large, scores about 1. None
reads which classes an attack targets (the calibration compares the score with the honest
population's, as for every detector).

- ``ae_class_profile``: the auto-encoder's mean error per class (true labels), divided by M's
  mean error of that class; the largest ratio over the median ratio.
- ``drift_class_profile``: the paired activation drift to M per class, in units of M's
  within-class spread of that class; the largest over the median.
- ``prediction_flow``: the share of the images M predicts as class c that the model predicts as
  c' (smoothed counts); the largest single flow over the median of each class's largest flow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from poisondetect.detectors.model_level import (
    ModelDetector,
    ModelRecord,
    class_means,
    paired_activations,
)
from poisondetect.errors import PoisonDetectError

_TINY = 1e-12


def _peak_over_median(values: np.ndarray) -> float:
    """The largest value over the median value (a uniform profile scores 1)."""
    return float(values.max() / max(float(np.median(values)), _TINY))


class AEClassProfile(ModelDetector):
    """The auto-encoder's per-class mean error relative to M's per-class mean error: the largest
    ratio over the median ratio (``score``), and the largest ratio itself (``peak``)."""

    needs = ("errors",)

    def fit(self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()) -> AEClassProfile:
        self._fit_common(genuine)
        e = np.asarray(genuine.need("errors"), dtype=np.float64)
        self.genuine_means_ = np.maximum(class_means(e, self.labels_, self.classes_), _TINY)
        return self

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        e = np.asarray(rec.need("errors"), dtype=np.float64)
        ratio = class_means(e, self.labels_, self.classes_) / self.genuine_means_
        return {"score": _peak_over_median(ratio), "peak": float(ratio.max())}


class DriftClassProfile(ModelDetector):
    """Paired activation drift to M per class, in units of M's within-class spread: the largest
    over the median (``score``)."""

    needs = ("activations",)

    def fit(self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()) -> DriftClassProfile:
        self._fit_common(genuine)
        a = np.asarray(genuine.need("activations"), dtype=np.float32)
        idx = np.searchsorted(self.classes_, self.labels_)
        means = np.vstack([a[self.labels_ == c].mean(0) for c in self.classes_])
        spread = np.linalg.norm(a - means[idx], axis=1).astype(np.float64)
        self.activations_ = a
        self.spread_ = np.maximum(class_means(spread, self.labels_, self.classes_), _TINY)
        return self

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        a = paired_activations(rec, self.activations_)
        d = np.linalg.norm(a - self.activations_, axis=1).astype(np.float64)
        return {
            "score": _peak_over_median(class_means(d, self.labels_, self.classes_) / self.spread_)
        }


class PredictionFlow(ModelDetector):
    """Where the model sends M's predictions: F[c, c'] = share of the images M predicts as c that
    the model predicts as c' (counts smoothed by ``alpha``, c' != c). ``score``: the largest
    single flow over the median of each class's largest flow; ``largest``: the largest flow."""

    def __init__(self, alpha: float = 0.5):
        self.alpha = alpha

    def fit(self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()) -> PredictionFlow:
        if not self.alpha > 0:
            raise PoisonDetectError("prediction_flow: alpha must be > 0")
        self._fit_common(genuine)
        self.preds_ = np.asarray(genuine.preds)
        self.n_classes_ = int(max(self.preds_.max(), self.labels_.max()) + 1)
        return self

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        k = max(self.n_classes_, int(np.max(rec.preds)) + 1)
        counts = np.zeros((k, k))
        np.add.at(counts, (self.preds_, np.asarray(rec.preds)), 1.0)
        present = counts.sum(1) > 0  # classes M predicts at all
        flow = (counts + self.alpha) / (counts.sum(1, keepdims=True) + self.alpha * k)
        np.fill_diagonal(flow, 0.0)
        largest = flow[present].max(1)
        return {"score": _peak_over_median(largest), "largest": float(largest.max())}
