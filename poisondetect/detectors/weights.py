"""A final-layer weight scanner (a cheap baseline, after DFBScanner's idea that a backdoor shows
in the last layer's weights): per class, how the classifier layer's row and bias moved from M's,
and how far the most-moved class stands from the others.

A backdoor or a flip pulls images into one class (the attacker's) or out of one (the target):
that class's row of ``model.classifier`` and its bias move unlike the other classes', whereas an
honest fine-tune moves every class's row by a similar amount. Reads only the weights (about a
millisecond per model), needs no images, and is movement-invariant in the sense of the profiles
(each class against the model's own other classes, not against M's scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from poisondetect.detectors.model_level import ModelDetector, ModelRecord
from poisondetect.errors import PoisonDetectError

FEATURES = ("delta", "norm", "cosine", "bias")  # the per-class statistics
_ONE_SIDED = {"delta", "cosine"}  # larger = moved more; the others count either way
SPREAD_FLOOR = 0.25  # honest_z: the honest spread of a class's z-score is at least this


def class_features(w: np.ndarray, b: np.ndarray, w0: np.ndarray, b0: np.ndarray) -> np.ndarray:
    """Per class (rows of the result's columns): the relative row change ||w_k - w0_k|| /
    ||w0_k||, the relative norm change (||w_k|| - ||w0_k||) / ||w0_k||, the cosine distance
    1 - cos(w_k, w0_k) and the bias change b_k - b0_k (in units of M's bias spread). Shape
    (len(FEATURES), K)."""
    n0 = np.maximum(np.linalg.norm(w0, axis=1), 1e-12)
    n = np.linalg.norm(w, axis=1)
    cos = np.sum(w * w0, axis=1) / np.maximum(n * n0, 1e-12)
    bias_scale = max(float(np.std(b0)), float(np.mean(np.abs(b0))), 1e-6)
    return np.stack(
        [np.linalg.norm(w - w0, axis=1) / n0, (n - n0) / n0, 1 - cos, (b - b0) / bias_scale]
    )


def loo_z(f: np.ndarray) -> np.ndarray:
    """Each class's value against the other classes' (mean and standard deviation without it);
    a spread floor keeps identical values at z = 0 and a lone outlier finite."""
    k = len(f)
    if k < 2:
        return np.zeros_like(f)
    total, sq = f.sum(), (f**2).sum()
    mean = (total - f) / (k - 1)
    var = np.maximum((sq - f**2) / (k - 1) - mean**2, 0.0)
    floor = 1e-6 + 1e-3 * np.abs(f).mean()
    return (f - mean) / np.maximum(np.sqrt(var), floor)


class FinalLayer(ModelDetector):
    """Per-class statistics of the classifier layer relative to M's (``FEATURES``: row change,
    norm change, cosine distance, bias change); each class's value as a z-score against the
    model's other classes; ``score`` = the largest z over classes and statistics (row change
    and cosine distance one-sided, norm and bias change either way), with each statistic's own
    largest z as a sub-score. ``prefix`` names the layer's parameters (``<prefix>weight``,
    ``<prefix>bias``; a missing bias counts as zeros).

    ``honest_z`` compares each class's z-scores with the *same class's* in the honest fitting
    replicates (as trigger inversion's ``honest_z`` does its triggers): how far each lies from
    their mean, in units of their standard deviation (floored at ``SPREAD_FLOOR``), the largest
    over classes and statistics (one-sided as ``score``). A class that every honest fine-tune
    moves more than the others (a recipe with small batches moves some rows far) is no sign of
    an attack; a class that moves unlike its honest counterparts is. A fitting replicate is
    compared with the others (left out by its name); the fitted state keeps the honest
    profiles, so ``audit`` needs nothing else."""

    needs = ("weights",)
    config_name = "final_layer"

    def __init__(self, prefix: str = "classifier."):
        self.prefix = prefix

    def _layer(self, rec: ModelRecord) -> tuple[np.ndarray, np.ndarray]:
        w = rec.need("weights")
        key = f"{self.prefix}weight"
        if key not in w:
            raise PoisonDetectError(
                f"model {rec.name!r}: no parameter {key!r} (final_layer.prefix names the "
                "classifier layer)"
            )
        weight = np.asarray(w[key], dtype=np.float64)
        weight = weight.reshape(len(weight), -1)
        bias = w.get(f"{self.prefix}bias")
        bias = np.zeros(len(weight)) if bias is None else np.asarray(bias, dtype=np.float64)
        return weight, bias.ravel()

    def fit(self, genuine: ModelRecord, honest: Sequence[ModelRecord] = ()) -> FinalLayer:
        if not isinstance(self.prefix, str):
            raise PoisonDetectError("final_layer: prefix must be a string")
        self._fit_common(genuine)
        self.weight_, self.bias_ = self._layer(genuine)
        self._fit_honest_profiles(honest, self._profile)
        return self

    def _profile(self, rec: ModelRecord) -> np.ndarray:
        """Each statistic's per-class z-scores (``FEATURES`` x classes, flattened)."""
        w, b = self._layer(rec)
        if w.shape != self.weight_.shape or b.shape != self.bias_.shape:
            raise PoisonDetectError(
                f"model {rec.name!r}: its classifier layer {w.shape} does not match the genuine "
                f"model's {self.weight_.shape} (another architecture?)"
            )
        return np.concatenate([loo_z(f) for f in class_features(w, b, self.weight_, self.bias_)])

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        profile = self._profile(rec)
        dev = self._honest_deviation(rec, profile, SPREAD_FLOOR)
        out, honest = {}, []
        for name, z, d in zip(
            FEATURES, np.split(profile, len(FEATURES)), np.split(dev, len(FEATURES)), strict=True
        ):
            one_sided = name in _ONE_SIDED
            out[name] = float(z.max() if one_sided else np.abs(z).max())
            honest.append(float(d.max() if one_sided else np.abs(d).max()))
        out["score"] = max(out.values())
        out["honest_z"] = max(honest)
        return out
