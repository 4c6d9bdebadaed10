"""Combine 1-D suspicion scores (``combine``) and turn them into a poisoned / clean mask.

``gmm_decision``: Razmi & Xiong's rule, no threshold: a 2-component Gaussian mixture on the scores,
the component with the higher mean is "poisoned". ``top_k_decision``: the K highest scores (the
baseline threshold rule of their Fig. 3).
"""

from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture

from poisondetect.checks import check_scores
from poisondetect.errors import PoisonDetectError


def check_alpha(alpha: float) -> float:
    """A mixing weight in ``[0, 1]``."""
    if not 0.0 <= alpha <= 1.0:
        raise PoisonDetectError(f"alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def combine(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha * a/||a||_2 + (1-alpha) * b/||b||_2`` (a zero vector stays zero): the one score
    combination (CAE's Eq. 3, CAE+'s Eq. 4, MagNet's ranking score), as the authors' code: each term
    is normalised by its L2 norm over the points scored together."""
    check_alpha(alpha)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise PoisonDetectError(f"scores {a.shape} and {b.shape} must be 1-D of equal length")

    def unit(v: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    return alpha * unit(a) + (1.0 - alpha) * unit(b)


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
