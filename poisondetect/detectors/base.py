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

import inspect

import numpy as np
from sklearn.base import BaseEstimator


class Detector(BaseEstimator):
    """Base class: gives ``get_params`` / ``set_params`` / ``clone`` and the default sub-scores."""

    def sub_scores(self, *args, **kwargs) -> dict[str, np.ndarray]:
        """Named scores beside the main one (none by default)."""
        return {}


def statistic_name(detector: str, statistic: str) -> str:
    """How tables and the audit name a detector's statistic: the detector's name for its main
    score, ``detector:statistic`` for the others."""
    return detector if statistic == "score" else f"{detector}:{statistic}"


def parse_statistic(name: str) -> tuple[str, str]:
    """``"ae_class"`` -> ``("ae_class", "score")``; ``"x:worst_class"`` -> ``("x", "worst_class")``."""
    detector, _, statistic = name.partition(":")
    return detector, statistic or "score"


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


def keyword_init(**defaults):
    """An ``__init__`` taking exactly these keyword-only parameters (with these defaults) and storing
    each as given, with a real signature, so ``get_params`` / ``clone`` see them. Lets detectors that
    share groups of parameters declare them once as dicts (see ``detectors.cae``) instead of
    repeating a long signature and its assignments per class."""

    def __init__(self, **params) -> None:
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected parameter(s) {unknown}")
        for name, default in defaults.items():
            setattr(self, name, params.get(name, default))

    kw = inspect.Parameter.KEYWORD_ONLY
    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, kw, default=value) for name, value in defaults.items()]
    )
    return __init__


class SampleDetector(Detector):
    """Sample-level detectors: ``fit(X, y)``, ``score_samples(X, y)``, ``sub_scores(X, y)``,
    ``predict(X, y)``, ``repair(X)``, and optionally ``score_from(sub_scores)``.

    ``X`` are the features the target model sees (``(N, D)`` in ``[0, 1]``, or images), ``y`` the
    (possibly poisoned) labels; a detector that does not use the labels ignores them. The stage
    filters a training set by ``predict`` (default: Razmi & Xiong's 2-component GMM on the scores,
    seeded with the detector's ``seed``) and retrains the target model on ``repair`` of the kept
    points (default: the points themselves; MagNet + reformer: their reconstructions).
    """

    def predict(self, X, y=None) -> np.ndarray:
        """True = poisoned: the GMM decision on ``score_samples``."""
        from poisondetect.detectors.decision import gmm_decision

        return gmm_decision(self.score_samples(X, y), seed=getattr(self, "seed", 0))

    def repair(self, X) -> np.ndarray:
        """The points the target model is retrained on in place of the kept ``X``."""
        return X

    def score_from(self, sub_scores: dict[str, np.ndarray]) -> np.ndarray:
        """The main score recomputed from stored sub-scores with the current parameters (so a
        scoring-time parameter such as CAE+'s ``alpha`` can be swept without refitting)."""
        raise NotImplementedError(f"{type(self).__name__} cannot rescore from its sub-scores")
