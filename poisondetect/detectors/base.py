"""The one detector protocol, for both levels (scikit-learn estimator style).

- ``__init__`` stores its keyword parameters as given (no validation, no sub-estimators built), so
  ``sklearn.base.clone`` and ``get_params`` work; a detector's config block maps one to one onto
  these parameters.
- ``fit(...)`` validates the parameters and the data, and returns ``self``; everything it learns is
  stored in attributes whose names end in ``_``.
- ``score_samples(X)`` returns one score per item (a training point at the sample level, a
  suspicious model at the model level): **higher = more suspicious**.
- ``sub_scores(X)`` returns the named scores a detector family exposes beside its main score
  (e.g. ``{"re": ..., "ce": ...}`` for CAE+), so stages and figures never reach inside a detector.

Sample-level detectors take ``fit(X, y)`` / ``score_samples(X, y)`` with the training points and
their (possibly poisoned) labels. Model-level detectors take ``fit(genuine, honest=())`` with
``ModelRecord``s (``poisondetect.detectors.model_level``) and score a list of records.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator


class Detector(BaseEstimator):
    """Base class: gives ``get_params`` / ``set_params`` / ``clone`` and the default sub-scores."""

    def sub_scores(self, *args, **kwargs) -> dict[str, np.ndarray]:
        """Named scores beside the main one (none by default)."""
        return {}


def fitted_state(det: Detector) -> tuple[dict[str, np.ndarray], dict]:
    """A fitted detector's learnt attributes (names ending in ``_``): arrays apart, for safetensors;
    numbers, strings and lists as JSON. Anything else is refused (no pickle anywhere)."""
    arrays, plain = {}, {}
    for name, value in vars(det).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if isinstance(value, np.ndarray):
            arrays[name] = np.ascontiguousarray(value)
        elif isinstance(value, bool | int | float | str | list | type(None)):
            plain[name] = value
        elif isinstance(value, np.generic):
            plain[name] = value.item()
        else:
            raise TypeError(f"{type(det).__name__}.{name}: cannot store a {type(value).__name__}")
    return arrays, plain


def restore_fitted(det: Detector, arrays: dict[str, np.ndarray], plain: dict) -> Detector:
    """Set the learnt attributes saved by ``fitted_state`` on an unfitted detector."""
    for name, value in {**plain, **arrays}.items():
        setattr(det, name, value)
    return det
