"""The final-layer weight scanner: a model whose one classifier row (and bias) moved beyond the
others scores above honest-like fine-tunes that move every row alike."""

from __future__ import annotations

import numpy as np
import pytest

from poisondetect.detectors import registry
from poisondetect.detectors.model_level import ModelRecord
from poisondetect.detectors.weights import FEATURES, loo_z
from poisondetect.errors import PoisonDetectError

K, D = 10, 32
LABELS = np.repeat(np.arange(K), 3)


def _rec(name, w, b):
    return ModelRecord(
        name, LABELS, LABELS, weights={"classifier.weight": w, "classifier.bias": b, "f.w": w}
    )


@pytest.fixture
def models():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(0, 0.3, (K, D)), rng.normal(0, 0.1, K)
    genuine = _rec("genuine", w0, b0)

    def honest_like(seed, scale=0.05):
        r = np.random.default_rng(seed)
        return w0 + r.normal(0, scale * 0.3, (K, D)), b0 + r.normal(0, scale * 0.1, K)

    honest = [_rec(f"honest_paper_r{s}", *honest_like(s)) for s in range(1, 21)]
    w, b = honest_like(99)
    w[3] += 0.4 * np.random.default_rng(5).normal(0, 0.3, D) + 0.2 * w0[3]  # class 3 pulled
    b[3] += 0.3
    return genuine, honest, _rec("pattern_f50_e10_r0", w, b)


def test_a_moved_row_scores_above_honest_like_noise(models):
    genuine, honest, attacked = models
    det = registry.build("model", "final_layer").fit(genuine)
    stats = det.statistics([*honest, attacked])
    scores = stats["score"]
    assert scores[-1] > scores[:-1].max()
    assert scores[-1] > 20 and scores[:-1].max() < 10  # honest: within a few z of the others
    for f in FEATURES:
        assert stats[f][-1] > np.median(stats[f][:-1])
    # M itself: nothing moved
    assert det.score_samples([genuine])[0] < 1e-6


def test_a_scaled_honest_fine_tune_is_not_flagged(models):
    """Every row moved alike (a longer, stronger fine-tune): the scanner compares classes, so
    the size of the move alone does not raise the score."""
    genuine, _, attacked = models
    w0, b0 = genuine.weights["classifier.weight"], genuine.weights["classifier.bias"]
    r = np.random.default_rng(3)
    strong = _rec("honest_x_r0", w0 * 1.5 + r.normal(0, 0.05, (K, D)), b0 * 1.5)
    det = registry.build("model", "final_layer").fit(genuine)
    assert det.score_samples([strong])[0] < det.score_samples([attacked])[0]


def test_loo_z_and_bad_records():
    assert np.all(loo_z(np.full(5, 0.3)) == 0)
    z = loo_z(np.array([0.0, 0.0, 0.0, 1.0]))
    assert z[-1] > 100 and np.isfinite(z).all()
    det = registry.build("model", "final_layer").fit(_rec("genuine", np.ones((K, D)), np.zeros(K)))
    with pytest.raises(PoisonDetectError, match="does not match"):
        det.score_samples([_rec("x", np.ones((K + 1, D)), np.zeros(K + 1))])
    with pytest.raises(PoisonDetectError, match="final_layer.prefix"):
        registry.build("model", "final_layer", {"prefix": "head."}).fit(
            _rec("genuine", np.ones((K, D)), np.zeros(K))
        )
