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


# -- populations of models: ROC, calibration ----------------------------------------------------
def _population(scores, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise PoisonDetectError(f"{name} scores contain NaN or infinite values")
    return s


def auroc(negatives, positives) -> float:
    """Area under the ROC curve of positives (attacked) against negatives (honest); ties count
    one half (the Mann-Whitney statistic). NaN when either population is empty."""
    neg, pos = _population(negatives, "honest"), _population(positives, "attacked")
    if not neg.size or not pos.size:
        return math.nan
    truth = np.r_[np.zeros(neg.size, bool), np.ones(pos.size, bool)]
    return float(roc_auc_score(truth, np.r_[neg, pos]))


def tpr_at_fpr(negatives, positives, fpr: float) -> float:
    """The largest detection rate of a threshold whose false-alarm rate on ``negatives`` is at most
    ``fpr`` (flagged = score > threshold; ties are never split)."""
    neg, pos = _population(negatives, "honest"), _population(positives, "attacked")
    if not neg.size or not pos.size:
        return math.nan
    best = 0.0
    for t in np.r_[np.unique(neg), -np.inf]:
        if np.mean(neg > t) <= fpr + 1e-12:
            best = max(best, float(np.mean(pos > t)))
    return best


def roc_curve_points(negatives, positives) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rates, detection rates) of every threshold, from (0, 0) to (1, 1)."""
    from sklearn.metrics import roc_curve

    neg, pos = _population(negatives, "honest"), _population(positives, "attacked")
    truth = np.r_[np.zeros(neg.size, bool), np.ones(pos.size, bool)]
    f, t, _ = roc_curve(truth, np.r_[neg, pos], drop_intermediate=False)
    return f, t


def auroc_interval(
    negatives, positives, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC, resampling each population separately."""
    neg, pos = _population(negatives, "honest"), _population(positives, "attacked")
    if not neg.size or not pos.size:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    ni = rng.integers(0, neg.size, (n_boot, neg.size))
    pi = rng.integers(0, pos.size, (n_boot, pos.size))
    # Mann-Whitney AUROC of every resample at once: P(pos > neg) + 0.5 P(pos == neg)
    a = np.empty(n_boot)
    for b in range(n_boot):
        n, p = neg[ni[b]], pos[pi[b]]
        a[b] = (p[:, None] > n[None, :]).mean() + 0.5 * (p[:, None] == n[None, :]).mean()
    lo, hi = np.quantile(a, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def calibrated_threshold(honest_scores, fpr: float) -> float:
    """A threshold at false-alarm rate ``fpr`` from honest scores (flagged = score > threshold).

    The split-conformal order statistic: the ceil((n + 1)(1 - fpr))-th smallest honest score, so
    that a new honest model exceeds it with probability at most ``fpr``. With fewer than
    ceil(1 / fpr) - 1 honest scores no order statistic gives that guarantee, and the largest
    honest score is used (expected false-alarm rate about 1 / (n + 1)).
    """
    s = np.sort(_population(honest_scores, "honest"))
    if not s.size:
        raise PoisonDetectError("no honest scores to calibrate a threshold on")
    if not 0 < fpr < 1:
        raise PoisonDetectError(f"calibration.fpr must be in (0, 1), got {fpr}")
    k = math.ceil((s.size + 1) * (1 - fpr))
    return float(s[min(k, s.size) - 1])


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial rate k / n at confidence ``level``:
    "0 of 6" reads as [0, 0.46]. (nan, nan) when n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def guaranteed_fpr(n_honest: int, fpr: float) -> float:
    """The false-alarm rate that ``calibrated_threshold`` can guarantee from ``n_honest`` honest
    scores at the requested ``fpr``: (n + 1 - k) / (n + 1) for the k-th order statistic it takes,
    which is ``fpr`` or less once n >= ceil(1 / fpr) - 1, and 1 / (n + 1) below that (8 honest
    models cannot promise 5 %: at best 1 / 9 = 11.1 %)."""
    if n_honest < 1:
        raise PoisonDetectError("no honest scores: no false-alarm rate can be guaranteed")
    k = min(math.ceil((n_honest + 1) * (1 - fpr)), n_honest)
    return (n_honest + 1 - k) / (n_honest + 1)


def empirical_pvalue(score: float, honest_scores) -> float:
    """Rank of a score among honest ones: (1 + #honest >= score) / (1 + n). Small = unusual."""
    s = _population(honest_scores, "honest")
    if not np.isfinite(score):
        raise PoisonDetectError(f"score {score} is not finite")
    return float((1 + np.sum(s >= score)) / (1 + s.size))


# -- the verdict: one statistic over several, calibrated as one -------------------------------
def _suspicion_keys(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``z`` (models x statistics, higher = more suspicious), its smallest
    per-statistic rank p-value within the rows (#rows at least as high / #rows) and, to order
    rows with the same smallest p-value, how far it stands out on the statistics that give it:
    its lead over the next lower row, in units of that row's distance above the median (the top
    of an honest sample leads the runner-up by about the runner-up's own spread; a model far
    beyond every honest one leads by several). Both are symmetric functions of the rows:
    exchangeable rows give exchangeable keys."""
    n, k = z.shape
    p = (z[None, :, :] >= z[:, None, :]).sum(axis=1) / n  # (rows, statistics)
    m = p.min(axis=1)
    lead = np.zeros((n, k))
    for j in range(k):
        v = z[:, j]
        med, tiny = np.median(v), 1e-12 * (1.0 + np.abs(v).max())
        below = np.where(v[None, :] < v[:, None], v[None, :], -np.inf).max(axis=1)
        lower = np.where(np.isfinite(below), below, v)  # the lowest row leads nothing
        lead[:, j] = (v - lower) / np.maximum(lower - med, tiny)
    lead = np.where(p == m[:, None], lead, -np.inf)  # only where its smallest p-value comes from
    return m, lead.max(axis=1)


def _fisher_suspicion(z: np.ndarray) -> np.ndarray:
    """For each row of ``z`` (models x statistics, higher = more suspicious), Fisher's sum of
    -log p over the statistics, each p the normal upper tail of the row's score standardised by
    the other rows (their mean and standard deviation: a model far beyond the others cannot hide
    by widening the spread it is measured by; a statistic constant over the others adds
    nothing). It adds up evidence: a model unusual on several statistics at once outranks one a
    little beyond the honest models on a single one, and how far beyond counts. A symmetric
    function of the rows: exchangeable rows give exchangeable suspicions. At least 3 rows."""
    from scipy.stats import norm

    n = len(z)
    z = z - z.mean(axis=0)  # centred first: the sums below lose no precision to an offset
    total, squares = z.sum(axis=0), (z**2).sum(axis=0)
    mean = (total - z) / (n - 1)  # of the other rows
    var = np.maximum((squares - z**2 - (n - 1) * mean**2) / (n - 2), 0.0)
    sd = np.sqrt(var)
    # a spread of rounding noise counts as none
    tiny = 1e-12 * (1.0 + np.abs(z).max(axis=0))
    std = np.divide(z - mean, sd, out=np.zeros_like(z), where=sd > tiny)
    return -norm.logsf(std).sum(axis=1)


# how the verdict makes one statistic of several (calibration.combine)
VERDICT_COMBINE = ("smallest_p", "fisher")


def verdict_pvalue(scores, honest, combine: str = "smallest_p") -> float:
    """The verdict's p-value of one model: its scores on k statistics (``scores``, shape (k,);
    higher = more suspicious) against n honest calibration models (``honest``, shape (n, k)).

    Full conformal over the n + 1 models: each model gets one suspicion from its k scores, and
    the verdict's p-value is the share of the n + 1 models at least as suspicious as this one.
    ``combine`` says how:

    - ``smallest_p``: its smallest per-statistic rank p-value among the n + 1 (ties ordered by
      how far it leads the next model there);
    - ``fisher``: Fisher's sum of -log p over the statistics, each p the normal tail of the score
      standardised by the other n models (``_fisher_suspicion``); with fewer than 2 calibration
      models there is no spread to standardise by, and the p-value is 1.

    Either way, for an honest model exchangeable with the calibration models,
    P(p-value <= a) <= floor(a (n + 1)) / (n + 1) whatever the statistics' dependence or
    distribution: flagging at ``p <= a`` is one test at one rate, not k tests at ``a`` each.
    With no calibration model the p-value is 1 (nothing can be flagged)."""
    if combine not in VERDICT_COMBINE:
        raise PoisonDetectError(
            f"calibration.combine must be one of {', '.join(VERDICT_COMBINE)}, got {combine!r}"
        )
    x = _population(scores, "the model's").reshape(1, -1)
    h = np.asarray(honest, dtype=np.float64).reshape(-1, x.shape[1])
    if not np.all(np.isfinite(h)):
        raise PoisonDetectError("honest scores contain NaN or infinite values")
    if not len(h):
        return 1.0
    pool = np.vstack([h, x])
    if combine == "fisher":
        if len(h) < 2:
            return 1.0
        s = _fisher_suspicion(pool)
        # a tolerance for the rounding of sums over the same numbers in another order
        as_suspicious = s >= s[-1] - 1e-9 * (1.0 + abs(s[-1]))
    else:
        m, t = _suspicion_keys(pool)
        as_suspicious = (m < m[-1]) | ((m == m[-1]) & (t >= t[-1]))
    return float(as_suspicious.sum() / len(pool))


def verdict_cutoff(n_honest: int, fpr: float) -> float:
    """The largest verdict p-value still flagged with ``n_honest`` calibration models at the
    requested ``fpr``: floor(fpr (n + 1)) / (n + 1), raised to 1 / (n + 1) when fewer than
    ceil(1 / fpr) - 1 honest models make ``fpr`` unreachable (the rate then guaranteed is
    ``guaranteed_fpr``). 0 with no calibration model."""
    if n_honest < 1:
        return 0.0
    return guaranteed_fpr(n_honest, fpr)


def replicates_needed(fpr: float, n_statistics: int = 1) -> int:
    """Honest fitting replicates a calibration needs: for ``fpr`` to be reachable at all
    (ceil(1 / fpr) - 1), and for a model that is the most extreme of the population on one
    statistic to be flagged even when as many honest models top the other statistics
    (ceil(n_statistics / fpr) - 1)."""
    if not 0 < fpr < 1:
        raise PoisonDetectError(f"calibration.fpr must be in (0, 1), got {fpr}")
    return max(1, math.ceil(round(n_statistics / fpr, 9)) - 1)
