"""A model-level detector learned from the populations: a logistic regression (scikit-learn) over
the other detectors' statistics.

What keeps it from seeing the answers:
- its negatives are the honest *fitting* replicates, each scored by the other detectors out of
  sample; the workflow scores each of them with a copy of this detector fitted without it (leave
  one out), as for every detector that learns from the honest population;
- its positives are the *shadow* attacks (``attacks.shadow_replicates``): attacked fine-tunes on
  class pairs drawn apart from every evaluated attack's pair, which are never evaluated;
- the held-out honest replicates and the evaluated attacks never enter a fit (``fitted_on_`` lists
  the models a fit saw, and the tests check it).
It reads only the other detectors' statistics, none of which reads the attack's classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from poisondetect.detectors.model_level import ModelDetector, ModelRecord
from poisondetect.errors import PoisonDetectError


class Combined(ModelDetector):
    """Logistic regression (balanced classes, L2 with inverse strength ``C``) on the standardised
    statistics of the other detectors; ``score`` = its decision function (the log-odds of
    "attacked"). ``exclude`` names statistics (``detector`` or ``detector:statistic``) to leave
    out."""

    needs = ("statistics",)
    uses_honest = True
    uses_shadow = True

    def __init__(self, C: float = 0.1, exclude: Sequence[str] = ()):
        self.C = C
        self.exclude = exclude

    def fit(
        self,
        genuine: ModelRecord,
        honest: Sequence[ModelRecord] = (),
        shadow: Sequence[ModelRecord] = (),
    ) -> Combined:
        from sklearn.linear_model import LogisticRegression

        if not self.C > 0:
            raise PoisonDetectError("combined: C must be > 0")
        if not honest or not shadow:
            raise PoisonDetectError(
                f"combined: learns from honest fitting replicates and shadow attacks, got "
                f"{len(honest)} and {len(shadow)}; set model_level.attacks.shadow_replicates >= 1"
            )
        self._fit_common(genuine)
        records = [*honest, *shadow]
        shared = set.intersection(*(set(r.need("statistics")) for r in records))
        self.features_ = sorted(shared - set(self.exclude))
        if not self.features_:
            raise PoisonDetectError("combined: no statistic of the other detectors to learn from")
        x = self._matrix(records)
        self.mean_ = x.mean(0)
        self.scale_ = np.maximum(x.std(0), 1e-12)
        y = np.r_[np.zeros(len(honest)), np.ones(len(shadow))]
        lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000)
        lr.fit((x - self.mean_) / self.scale_, y)
        self.weights_ = lr.coef_[0].astype(np.float64)
        self.intercept_ = float(lr.intercept_[0])
        self.fitted_on_ = [r.name for r in records]
        return self

    def _matrix(self, records: Sequence[ModelRecord]) -> np.ndarray:
        rows = []
        for r in records:
            stats = r.need("statistics")
            missing = [f for f in self.features_ if f not in stats]
            if missing:
                raise PoisonDetectError(
                    f"model {r.name!r}: the combined detector needs the statistics {missing}"
                )
            rows.append([stats[f] for f in self.features_])
        return np.asarray(rows, dtype=np.float64)

    def _one(self, rec: ModelRecord) -> dict[str, float]:
        z = (self._matrix([rec])[0] - self.mean_) / self.scale_
        return {"score": float(z @ self.weights_ + self.intercept_)}
