"""Turn 1-D suspicion scores into a poisoned / clean mask.

``gmm_decision``: Razmi & Xiong's rule, no threshold: a 2-component Gaussian mixture on the scores,
the component with the higher mean is "poisoned". ``top_k_decision``: the K highest scores (the
baseline threshold rule of their Fig. 3).
"""

from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture

from poisondetect.errors import PoisonDetectError, require_finite


def check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    """``scores`` as a finite 1-D float64 array, else ``PoisonDetectError``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise PoisonDetectError(f"{name} must be 1-D (one score per point), got shape {s.shape}")
    # Fail closed: a NaN is never above (or below) any threshold, so it would pass as clean.
    return require_finite(
        s,
        name,
        "the detector's input or its training diverged; check the data and the detector settings",
        "points",
    )


def gmm_decision(scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flag the points that a 2-component 1-D Gaussian mixture puts in its higher-mean component.

    ``GaussianMixture(n_components=2, random_state=seed)`` is fitted on the standardised scores
    (z-scores: the fit is affine-invariant apart from sklearn's tiny ``reg_covar``, so standardising
    only removes the dependence on the scores' scale). Points assigned to the higher-mean component
    are flagged, except points scoring below the lower component's mean: a wide "poisoned" component
    can otherwise win the far lower tail, and a lower score than the typical clean point is never
    more suspicious.

    Degenerate cases flag nothing: fewer than 2 points, or fewer than 2 distinct score values
    (there is nothing to separate).
    """
    s = check_scores(scores)
    flagged = np.zeros(s.shape, dtype=bool)
    if s.size < 2 or np.unique(s).size < 2:
        return flagged
    z = ((s - s.mean()) / s.std()).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, random_state=seed).fit(z)
    means = gmm.means_.ravel()
    high, low = int(np.argmax(means)), int(np.argmin(means))
    if high == low:  # both components collapsed onto the same mean
        return flagged
    return (gmm.predict(z) == high) & (z.ravel() > means[low])


def top_k_decision(scores: np.ndarray, k: int) -> np.ndarray:
    """Flag the ``k`` highest scores; ties are broken by position (the earlier point wins).

    ``k`` larger than the number of points flags everything; ``k = 0`` flags nothing.
    """
    s = check_scores(scores)
    if int(k) != k or k < 0:
        raise PoisonDetectError(f"k must be a non-negative integer, got {k!r}")
    order = np.argsort(-s, kind="stable")
    flagged = np.zeros(s.shape, dtype=bool)
    flagged[order[: int(k)]] = True
    return flagged
