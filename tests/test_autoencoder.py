import numpy as np
import pytest
from sklearn.base import clone

from poisondetect.detectors.autoencoder import ActivationAutoencoder
from poisondetect.errors import PoisonDetectError


def _acts(n=300, d=24, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    w = np.random.default_rng(99).normal(size=(4, d))
    return np.maximum(z @ w + shift, 0).astype(np.float32)


def test_reconstruction_error_falls_during_fitting():
    det = ActivationAutoencoder(latent=4, hidden=[16], epochs=40, batch_size=32).fit(_acts())
    h = det.loss_history_
    assert h[-1] < 0.5 * h[0]


def test_shifted_activations_score_higher_and_clone_is_unfitted():
    genuine = _acts(seed=0)
    det = ActivationAutoencoder(latent=4, hidden=[16], epochs=60, batch_size=32).fit(genuine)
    honest = _acts(seed=1)
    shifted = honest + np.random.default_rng(3).normal(0, 1.0, size=(300, 24)).astype(np.float32)
    assert det.score_samples(shifted).mean() > 2 * det.score_samples(honest).mean()
    copy = clone(det)
    assert copy.get_params() == det.get_params() and not hasattr(copy, "net_")


def test_same_seed_same_scores_and_bundle_round_trip(tmp_path):
    x = _acts()
    a = ActivationAutoencoder(latent=4, hidden=[16], epochs=5, seed=3).fit(x)
    b = ActivationAutoencoder(latent=4, hidden=[16], epochs=5, seed=3).fit(x)
    np.testing.assert_array_equal(a.score_samples(x), b.score_samples(x))
    a.save(tmp_path / "d.safetensors")
    c = ActivationAutoencoder.load(tmp_path / "d.safetensors")
    np.testing.assert_allclose(c.score_samples(x), a.score_samples(x), rtol=1e-6)
    assert c.get_params() == {**a.get_params(), "device": "auto"}


def test_wrong_width_and_bad_bundle_are_explained(tmp_path):
    det = ActivationAutoencoder(latent=2, hidden=[8], epochs=1).fit(_acts())
    with pytest.raises(PoisonDetectError, match="width 10"):
        det.score_samples(np.zeros((3, 10), np.float32))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(PoisonDetectError, match="not a readable safetensors file"):
        ActivationAutoencoder.load(bad)


def test_dead_units_do_not_switch_standardisation_off():
    x = _acts()
    x[:, :16] = 0.0  # most units never fire: the median std over all units would be 0
    det = ActivationAutoencoder(latent=4, hidden=[16], epochs=1).fit(x)
    live_median = np.median(x.std(0)[x.std(0) > 0])
    assert np.allclose(det.std_[:16], live_median)  # floored at the live units' median
    assert (det.std_[16:] >= live_median - 1e-6).all()
