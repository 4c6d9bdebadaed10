"""Sample-level detectors (Razmi & Xiong): CAE+ formula, GMM / top-K decisions, detection of
flipped labels on a small digits task, determinism, baselines."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from poisondetect.detectors.baselines import OD, MagNet
from poisondetect.detectors.cae import CAE, RAE, CAEPlus
from poisondetect.detectors.decision import combine, gmm_decision, top_k_decision
from poisondetect.detectors.nets import DenseAutoencoder, infer_image_shape, mlp
from poisondetect.errors import PoisonDetectError
from poisondetect.fitting import evaluate_loss, fit_loop, split_indices
from poisondetect.metrics import filter_metrics

# Small, fast settings for the 8x8 digits (the paper's 300 / 100 epochs at batch 256 are for 28x28).
FAST = dict(batch_size=32, lr=1e-2, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def flipped_digits():
    """Digits 0 vs 1 (8x8, in [0, 1]) plus 10% copies with flipped labels (the poisons)."""
    d = load_digits()
    keep = (d.target == 0) | (d.target == 1)
    x = (d.data[keep] / 16.0).astype(np.float32)
    y = (d.target[keep] == 1).astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(x), size=len(x) // 10, replace=False)
    xp = np.concatenate([x, x[idx]])
    yp = np.concatenate([y, 1 - y[idx]])
    is_poison = np.r_[np.zeros(len(x), bool), np.ones(len(idx), bool)]
    return xp, yp, is_poison


@pytest.fixture(scope="module")
def caeplus(flipped_digits):
    x, y, _ = flipped_digits
    return CAEPlus(rae_epochs=40, cae_epochs=40, seed=0, **FAST).fit(x, y)


# ----------------------------------------------------------------------------- CAE+ score


def test_combine_hand_computed():
    re, ce = np.array([3.0, 4.0]), np.array([0.0, 2.0])
    np.testing.assert_allclose(combine(re, ce, 1.0), [0.6, 0.8])
    np.testing.assert_allclose(combine(re, ce, 0.0), [0.0, 1.0])
    np.testing.assert_allclose(combine(re, ce, 0.5), [0.3, 0.9])
    np.testing.assert_allclose(combine(re, np.zeros(2), 0.5), [0.3, 0.4])  # zero vector stays zero
    with pytest.raises(PoisonDetectError):
        combine(re, ce, 1.5)


def test_caeplus_score_is_weighted_sum_of_normalised_terms(caeplus, flipped_digits):
    x, y, _ = flipped_digits

    def with_alpha(alpha):  # the fitted CAE+ with another alpha (a scoring-time parameter)
        return copy.copy(caeplus).set_params(alpha=alpha)

    sub = caeplus.sub_scores(x, y)
    re, ce = sub["re"], sub["ce"]
    assert re.shape == ce.shape == (len(x),)
    assert np.all(re > 0) and np.all(ce >= 0)
    # RE is the L1 norm of x - x_hat of the RAE
    x_hat = caeplus.rae_.reconstruct(x)
    np.testing.assert_allclose(re, np.abs(x - x_hat).sum(1), rtol=1e-4)
    for alpha in (0.66, 0.2):
        expected = alpha * re / np.linalg.norm(re) + (1 - alpha) * ce / np.linalg.norm(ce)
        np.testing.assert_allclose(with_alpha(alpha).score_samples(x, y), expected, rtol=1e-6)
    np.testing.assert_allclose(
        with_alpha(1.0).score_samples(x, y), re / np.linalg.norm(re), rtol=1e-6
    )
    np.testing.assert_allclose(
        with_alpha(0.0).score_samples(x, y), ce / np.linalg.norm(ce), rtol=1e-6
    )
    # rescoring the stored sub-scores with another alpha gives the same scores (Fig. 4's sweep)
    np.testing.assert_allclose(with_alpha(0.2).score_from(sub), with_alpha(0.2).score_samples(x, y))
    # default alpha is the constructor's (0.66), normalised over the batch being scored
    np.testing.assert_allclose(caeplus.score_samples(x, y), combine(re, ce, 0.66))
    sub = slice(0, 50)
    np.testing.assert_allclose(
        caeplus.score_samples(x[sub], y[sub]), combine(re[sub], ce[sub], 0.66), rtol=1e-6
    )


def test_cae_ce_is_cross_entropy_of_given_label(caeplus, flipped_digits):
    x, y, _ = flipped_digits
    proba = caeplus.cae_.predict_proba(x[:20])
    ce = caeplus.cae_.sub_scores(x[:20], y[:20])["ce"]
    np.testing.assert_allclose(ce, -np.log(proba[np.arange(20), y[:20]]), rtol=1e-4, atol=1e-6)
    ce_flipped = caeplus.cae_.sub_scores(x[:20], 1 - y[:20])["ce"]
    np.testing.assert_allclose(
        ce_flipped, -np.log(proba[np.arange(20), 1 - y[:20]]), rtol=1e-4, atol=1e-6
    )


# ----------------------------------------------------------------------------- detection


def test_caeplus_detects_flipped_labels(caeplus, flipped_digits):
    x, y, is_poison = flipped_digits
    scores = caeplus.score_samples(x, y)
    m = filter_metrics(is_poison, caeplus.predict(x, y), scores)
    assert m["f1"] > 0.8, m
    assert m["auroc"] > 0.95, m


def test_cae_detects_flipped_labels(flipped_digits):
    x, y, is_poison = flipped_digits
    cae = CAE(epochs=40, seed=1, **FAST).fit(x, y)
    m = filter_metrics(is_poison, cae.predict(x, y), cae.score_samples(x, y))
    assert m["f1"] > 0.8, m
    # the classifier learned the clean majority: it is right on most clean points
    clean_acc = (cae.predict_proba(x[~is_poison]).argmax(1) == y[~is_poison]).mean()
    assert clean_acc > 0.9


def test_rae_reconstruction_error_falls(flipped_digits):
    x, _, _ = flipped_digits
    untrained = RAE(epochs=0, val_fraction=0.0, seed=0, **FAST).fit(x)
    trained = RAE(epochs=15, val_fraction=0.0, seed=0, **FAST).fit(x)
    losses = [h["loss"] for h in trained.history_]
    assert len(losses) == 15 and losses[-1] < 0.5 * losses[0]
    assert trained.score_samples(x).mean() < 0.7 * untrained.score_samples(x).mean()
    assert untrained.history_ == []


def test_same_seed_same_scores(flipped_digits):
    x, y, _ = flipped_digits
    a = CAE(epochs=3, seed=7, **FAST).fit(x, y).sub_scores(x, y)
    b = CAE(epochs=3, seed=7, **FAST).fit(x, y).sub_scores(x, y)
    c = CAE(epochs=3, seed=8, **FAST).fit(x, y).sub_scores(x, y)
    np.testing.assert_array_equal(a["re"], b["re"])
    np.testing.assert_array_equal(a["ce"], b["ce"])
    assert not np.array_equal(a["ce"], c["ce"])
    m1 = MagNet(epochs=2, seed=3, **FAST).fit(x).score_samples(x)
    m2 = MagNet(epochs=2, seed=3, **FAST).fit(x).score_samples(x)
    np.testing.assert_array_equal(m1, m2)


def test_od_scores_and_mask(flipped_digits):
    x, y, is_poison = flipped_digits
    od = OD().fit(x, y)
    scores = od.score_samples(x, y)
    np.testing.assert_allclose(scores[0], np.linalg.norm(x[0] - x[y == y[0]].mean(0)), rtol=1e-6)
    mask = od.predict(x, y)
    assert mask.dtype == bool and mask.shape == (len(x),) and 0 < mask.sum() < len(x)
    # hand case: centroids (0, 0) and (1, 1)
    xs = np.array([[0.0, 0.0], [0.0, 0.2], [1.0, 1.0], [0.8, 1.0]], dtype=np.float32)
    ys = np.array([0, 0, 1, 1])
    od2 = OD().fit(xs, ys)
    np.testing.assert_allclose(od2.centroids_, [[0.0, 0.1], [0.9, 1.0]])
    np.testing.assert_allclose(
        od2.score_samples(xs[:1], np.array([1])), [np.hypot(0.9, 1.0)], rtol=1e-6
    )
    with pytest.raises(PoisonDetectError):
        OD().fit(xs, np.zeros(4, dtype=int))  # class 1 missing


def test_magnet_masks_reformer_and_distinct_autoencoders(flipped_digits):
    x, y, _ = flipped_digits
    mag = MagNet(epochs=3, seed=0, **FAST).fit(x)
    ae1, ae2 = mag.nets_
    assert ae1 is not ae2
    assert [p.shape for p in ae1.parameters()] != [p.shape for p in ae2.parameters()]
    e = mag.sub_scores(x)
    e1, e2 = e["e1"], e["e2"]
    assert not np.allclose(e1, e2)
    mask = mag.predict(x)
    assert mask.dtype == bool and mask.shape == (len(x),)
    np.testing.assert_array_equal(mask, gmm_decision(e1) | gmm_decision(e2))  # union rule
    np.testing.assert_allclose(
        mag.score_samples(x), e1 / np.linalg.norm(e1) + e2 / np.linalg.norm(e2)
    )
    reformed = mag.reform(x)
    assert reformed.shape == x.shape and reformed.dtype == np.float32
    assert reformed.min() >= 0.0 and reformed.max() <= 1.0 and not np.allclose(reformed, x)
    # dense variant: two different sizes, and never the same configuration twice
    dense = MagNet(archs=("dense", "dense"), epochs=1, **FAST).fit(x)
    assert [p.shape for p in dense.nets_[0].parameters()] != [
        p.shape for p in dense.nets_[1].parameters()
    ]
    with pytest.raises(PoisonDetectError):
        MagNet(archs=("conv_nopool", "conv_nopool")).fit(x)


# ----------------------------------------------------------------------------- decisions


def test_gmm_flags_higher_mean_component():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0, 1, 90), rng.normal(10, 1, 10)]
    expected = np.r_[np.zeros(90, bool), np.ones(10, bool)]
    np.testing.assert_array_equal(gmm_decision(scores), expected)
    # independent of the scale and offset of the scores
    np.testing.assert_array_equal(gmm_decision(scores * 1e-4 + 3.0), expected)
    # the high component is the larger one
    scores = np.r_[rng.normal(0, 1, 10), rng.normal(10, 1, 90)]
    np.testing.assert_array_equal(
        gmm_decision(scores), np.r_[np.zeros(10, bool), np.ones(90, bool)]
    )


def test_gmm_never_flags_the_low_tail():
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(0, 1, 200), rng.normal(10, 3, 30), [-20.0]]
    flagged = gmm_decision(scores)
    assert not flagged[-1]
    assert flagged[200:230].sum() >= 28 and flagged[:200].sum() <= 2


def test_gmm_degenerate_cases():
    assert gmm_decision(np.full(20, 0.3)).sum() == 0
    assert gmm_decision(np.array([1.0])).tolist() == [False]
    assert gmm_decision(np.array([])).shape == (0,)
    assert gmm_decision(np.array([0.0, 0.0, 0.0, 1.0])).tolist() == [False, False, False, True]
    with pytest.raises(PoisonDetectError):
        gmm_decision(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(PoisonDetectError):
        gmm_decision(np.zeros((3, 2)))


def test_top_k():
    s = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    assert top_k_decision(s, 2).tolist() == [False, True, False, True, False]
    assert top_k_decision(s, 3).tolist() == [False, True, True, True, False]
    assert top_k_decision(np.array([1.0, 1.0, 1.0, 0.0]), 2).tolist() == [True, True, False, False]
    assert top_k_decision(s, 0).sum() == 0
    assert top_k_decision(s, 10).all()
    with pytest.raises(PoisonDetectError):
        top_k_decision(s, -1)


# ----------------------------------------------------------------------------- training loop / inputs


def test_fit_loop_keeps_best_validation_weights():
    torch.manual_seed(0)
    x = torch.randn(60, 20)
    y = torch.randint(0, 2, (60,))  # random labels: a big net overfits, validation loss rises
    net = mlp([20, 256, 256, 2], "relu")

    def loss_fn(m, xb, yb):
        return F.cross_entropy(m(xb), yb)

    hist = fit_loop(
        net,
        loss_fn,
        [x, y],
        seed=0,
        batch_size=16,
        epochs=60,
        lr=1e-2,
        val_fraction=0.3,
        patience=5,
    )
    val = [h["val_loss"] for h in hist]
    best = int(np.argmin(val))
    assert len(hist) == best + 1 + 5 < 60  # stopped 5 epochs after the best one
    _, val_idx = split_indices(60, 0.3, 0)
    restored = evaluate_loss(net, loss_fn, [x, y], val_idx, 16)["loss"]
    assert restored == pytest.approx(val[best], rel=1e-5)


def test_dense_autoencoder_shapes():
    ae = DenseAutoencoder(64, hidden=[32], latent=8, output_activation="sigmoid")
    out = ae(torch.rand(5, 64))
    assert out.shape == (5, 64) and ae.encode(torch.rand(5, 64)).shape == (5, 8)
    assert out.min() >= 0 and out.max() <= 1


def test_dense_arch_and_image_input(flipped_digits):
    x, y, _ = flipped_digits
    s = CAEPlus(arch="dense", hidden=(32,), latent=8, rae_epochs=2, cae_epochs=2, **FAST).fit(x, y)
    assert s.score_samples(x, y).shape == (len(x),)
    imgs = x.reshape(-1, 1, 8, 8)
    r = RAE(epochs=1, **FAST).fit(imgs)
    assert r.reconstruct(imgs).shape == imgs.shape
    assert infer_image_shape(784) == (1, 28, 28) and infer_image_shape(3072) == (3, 32, 32)


def test_bad_input_raises(flipped_digits):
    x, y, _ = flipped_digits
    cae = CAE(epochs=1, **FAST)
    with pytest.raises(PoisonDetectError):
        cae.score_samples(x, y)  # not fitted
    bad = x.copy()
    bad[0, 0] = np.nan
    for args in [
        (bad, y),
        (x * 16, y),
        (x, y[:-1]),
        (x, np.full(len(x), 2)),
        (x, None),
        (x[:, :50], y),
    ]:
        with pytest.raises(PoisonDetectError):
            cae.fit(*args)
    with pytest.raises(PoisonDetectError):
        CAEPlus(alpha=1.2).fit(x, y)


def test_shared_networks_give_the_scores_of_fitting_them_inside(tmp_path):
    """CAE+ made of an RAE and a CAE fitted once for the cell (saved and read back, as a
    fit_network job passes them) scores exactly as CAE+ fitting its own; MagNet + reformer takes
    MagNet's networks."""
    from poisondetect.detectors import registry
    from poisondetect.detectors.cae import CAE, RAE, load_network, save_network
    from poisondetect.detectors.networks import network_id, networks

    rng = np.random.default_rng(0)
    x = rng.random((120, 64)).astype(np.float32)
    y = (rng.random(120) < 0.5).astype(np.int64)
    extra = dict(batch_size=32, lr=0.01, arch="dense", seed=0, device="cpu")
    block = {"rae_epochs": 3, "cae_epochs": 3, "alpha": 0.4}
    inside = registry.build("sample", "cae_plus", block, **extra).fit(x, y)
    fitted = {}
    for role, (kind, settings) in networks("cae_plus", block, **extra).items():
        net = {"rae": RAE, "cae": CAE}[kind](**settings, device="cpu").fit(x, y)
        save_network(net, tmp_path / f"{role}.safetensors")
        nid, fitted[role] = load_network(tmp_path / f"{role}.safetensors", "cpu")
        assert nid == network_id(kind, settings)
    shared = registry.build("sample", "cae_plus", block, **extra).fit(x, y, networks=fitted)
    np.testing.assert_allclose(shared.score_samples(x, y), inside.score_samples(x, y), rtol=1e-6)
    # an RAE detector with CAE+'s RAE settings is the same network (one fit serves both)
    assert (
        networks("rae", {"epochs": 3}, **extra)["rae"]
        == networks("cae_plus", block, **extra)["rae"]
    )
    mag = networks("magnet", {"epochs": 2}, **extra)
    assert mag == networks("magnet_reformer", {"epochs": 2}, **extra) and len(mag) == 2
    assert mag["ae1"][1]["seed"] != mag["ae2"][1]["seed"]
