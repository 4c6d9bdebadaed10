"""Cross-check of the gradient attack against IBM ART's ``PoisoningAttackSVM`` (a test-only
dependency): a small linear SVM, the same starting points and the same step.

ART 1.20.1's ``attack_gradient`` is not the exact gradient of the validation hinge loss: it sums
over every validation point (not only those with a positive hinge), uses the model's predicted
labels of the support vectors, puts the bounded support vectors into Q_ss, adds a random ridge, and
its M_k term differs from Biggio et al.'s eq. (10) by sign and normalisation. Its direction agrees
with ours (which matches finite differences, tests/test_svm_attacks.py) only loosely: cosines from
-0.5 to 0.6 on these data. So the test checks what an attacker cares about: from the same start,
our first step raises the validation hinge loss at least as much as ART's, and the finished
poisons lower the validation accuracy at least as much as ART's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.svm import SVC

from poisondetect.attacks.svm import gradient_attack, validation_hinge_gradient

art = pytest.importorskip("art", reason="adversarial-robustness-toolbox (test-only) not installed")

STEP, ITERS, D = 0.25, 10, 10
LINEAR = {"kernel": "linear", "C": 1.0}


def _blobs(rng, n, sep=0.15):
    y = np.arange(n) % 2
    x = np.clip(0.5 + (y[:, None] - 0.5) * sep + 0.15 * rng.standard_normal((n, D)), 0, 1)
    return x, y


@pytest.mark.parametrize("seed", [0, 1])
def test_our_attack_hurts_at_least_as_much_as_arts(seed):
    from art.attacks.poisoning import PoisoningAttackSVM
    from art.estimators.classification.scikitlearn import ScikitlearnSVC

    rng = np.random.default_rng(seed)
    x_tr, y_tr = _blobs(rng, 40)
    x_val, y_val = _blobs(rng, 60)
    src = np.arange(3)  # the same starting points: training points, labels flipped
    y_p = 1 - y_tr[src]

    def hinge(x_p, y_p=y_p):
        x, y = np.vstack([x_tr, x_p]), np.r_[y_tr, y_p]
        return validation_hinge_gradient(LINEAR, x, y, len(x_tr), x_val, y_val)[0]

    def val_accuracy(x_p):
        return SVC(**LINEAR).fit(np.vstack([x_tr, x_p]), np.r_[y_tr, y_p]).score(x_val, y_val)

    np.random.seed(seed)  # ART's random ridge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's deprecation of SVC(probability=True)
        clf = ScikitlearnSVC(model=SVC(probability=True, **LINEAR), clip_values=(0, 1))
        clf.fit(x_tr, np.eye(2)[y_tr])
        attack = PoisoningAttackSVM(
            clf, step=STEP, eps=1.0, x_train=x_tr, y_train=np.eye(2)[y_tr], x_val=x_val,
            y_val=np.eye(2)[y_val], max_iter=ITERS, verbose=False,
        )  # fmt: skip
        # first steps from each starting point, one poison at a time
        for s in src:
            x0, y0 = x_tr[s], np.array([1 - y_tr[s]])
            g_ours = validation_hinge_gradient(
                LINEAR, np.vstack([x_tr, x0]), np.r_[y_tr, y0], len(x_tr), x_val, y_val
            )[1]
            attack.estimator.model.fit(np.vstack([x_tr, x0]), np.r_[y_tr, y0])
            g_art = attack.attack_gradient(x0[None].copy())[0]
            step = {
                name: np.clip(x0 + STEP * g / np.linalg.norm(g), 0, 1)
                for name, g in (("ours", g_ours), ("art", g_art))
            }
            assert hinge(step["ours"][None], y0) >= hinge(step["art"][None], y0) - 1e-12
            assert hinge(step["ours"][None], y0) > hinge(x0[None], y0)  # an ascent step
        x_art, _ = attack.poison(x_tr[src].copy(), y=np.eye(2)[y_p])
    x_ours, y_ours = gradient_attack(
        x_tr, y_tr, x_val, y_val, len(src), LINEAR, np.random.default_rng(0),
        sources=src, noise=0.0, step=STEP, max_iter=ITERS,
    )  # fmt: skip
    np.testing.assert_array_equal(y_ours, y_p)
    assert hinge(x_ours) >= hinge(x_art)
    assert val_accuracy(x_ours) <= val_accuracy(x_art)
    assert val_accuracy(x_ours) < SVC(**LINEAR).fit(x_tr, y_tr).score(x_val, y_val)
