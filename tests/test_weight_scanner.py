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


@pytest.fixture
def natural(models):
    """Honest fine-tunes that all move class 7's row three times as far as the others (a class
    every honest recipe moves most), and one more such fine-tune to audit."""
    genuine, _, attacked = models
    w0, b0 = genuine.weights["classifier.weight"], genuine.weights["classifier.bias"]

    def moved(seed):
        r = np.random.default_rng(seed)
        step = r.normal(0, 0.015, (K, D))
        step[7] *= 3
        return _rec(f"honest_sampled_r{seed}", w0 + step, b0 + r.normal(0, 0.005, K))

    return genuine, [moved(s) for s in range(100, 120)], moved(150), attacked


def test_honest_z_forgives_a_class_every_honest_fine_tune_moves(natural):
    genuine, honest, audited, attacked = natural
    det = registry.build("model", "final_layer").fit(genuine, honest)
    plain = det.fit(genuine).statistics([*honest, audited, attacked])
    det.fit(genuine, honest)
    stats = det.statistics([*honest, audited, attacked])
    # score: class 7 stands out of every honest model, by several z
    assert plain["score"][:-1].min() > 5
    # honest_z: the audited honest model is like the honest ones; the attack is far beyond
    assert stats["honest_z"][-2] < stats["honest_z"][:-2].max() + 1
    assert stats["honest_z"][-1] > 3 * stats["honest_z"][:-1].max()


def test_honest_z_by_hand_leave_one_out_and_restored_state(natural):
    from poisondetect.detectors.base import fitted_state, restore_fitted
    from poisondetect.detectors.weights import SPREAD_FLOOR

    genuine, honest, audited, _ = natural
    det = registry.build("model", "final_layer").fit(genuine, honest)
    prof = {r.name: det._profile(r) for r in [*honest, audited]}
    ref = np.stack([prof[h.name] for h in honest[1:]])  # replicate 0 left out by name
    d = (prof[honest[0].name] - ref.mean(0)) / np.maximum(ref.std(0, ddof=1), SPREAD_FLOOR)
    parts = np.split(d, len(FEATURES))
    want = max(p.max() if f in ("delta", "cosine") else np.abs(p).max()
               for f, p in zip(FEATURES, parts, strict=True))  # fmt: skip
    assert det.statistics([honest[0]])["honest_z"][0] == pytest.approx(want)
    refit = registry.build("model", "final_layer").fit(genuine, honest[1:])
    assert det.statistics([honest[0]])["honest_z"][0] == pytest.approx(
        refit.statistics([honest[0]])["honest_z"][0]
    )
    arrays, plain = fitted_state(det)
    back = restore_fitted(registry.build("model", "final_layer"), arrays, plain)
    np.testing.assert_allclose(
        back.statistics([audited, *honest])["honest_z"],
        det.statistics([audited, *honest])["honest_z"],
    )
    # no honest replicate: each z against 0, in units of the floor
    alone = registry.build("model", "final_layer").fit(genuine)
    p = np.split(prof[audited.name], len(FEATURES))
    want = max(q.max() if f in ("delta", "cosine") else np.abs(q).max()
               for f, q in zip(FEATURES, p, strict=True)) / SPREAD_FLOOR  # fmt: skip
    assert alone.statistics([audited])["honest_z"][0] == pytest.approx(want)
