import numpy as np
import pytest

from poisondetect.attacks.labels import flip_attack, paste_pattern, pattern_attack
from poisondetect.errors import PoisonDetectError


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 40)  # 40 images per class
    x = rng.uniform(0, 0.5, size=(len(y), 3, 12, 12)).astype(np.float32)
    return x, y


def test_flip_changes_exactly_the_share_of_the_target_class(data):
    x, y = data
    atk = flip_attack(x, y, target_class=2, attacker_class=4, fraction=0.5, seed=1)
    changed = np.flatnonzero(atk.y != y)
    assert len(changed) == 20  # 50% of the 40 images of class 2
    np.testing.assert_array_equal(changed, atk.attacked)
    assert (y[changed] == 2).all() and (atk.y[changed] == 4).all()
    assert np.array_equal(atk.x, x)  # images untouched


def test_flip_is_reproducible_from_the_seed(data):
    x, y = data
    a = flip_attack(x, y, target_class=2, attacker_class=4, fraction=0.5, seed=7)
    b = flip_attack(x, y, target_class=2, attacker_class=4, fraction=0.5, seed=7)
    c = flip_attack(x, y, target_class=2, attacker_class=4, fraction=0.5, seed=8)
    np.testing.assert_array_equal(a.attacked, b.attacked)
    assert not np.array_equal(a.attacked, c.attacked)


def test_pattern_pastes_a_full_square_only_on_chosen_images(data):
    x, y = data
    atk = pattern_attack(
        x,
        y,
        target_class=1,
        attacker_class=3,
        fraction=0.25,
        pattern_size=5,
        pattern_value=1.0,
        seed=3,
    )
    assert len(atk.attacked) == 10
    untouched = np.setdiff1d(np.arange(len(y)), atk.attacked)
    np.testing.assert_array_equal(atk.x[untouched], x[untouched])
    np.testing.assert_array_equal(atk.y[untouched], y[untouched])
    assert (atk.y[atk.attacked] == 3).all() and (y[atk.attacked] == 1).all()
    for i in atk.attacked:
        diff = atk.x[i] != x[i]
        # original pixels are < 0.5, so every pasted pixel differs: exactly one 5x5 square per channel
        assert diff.sum() == 3 * 25
        rows, cols = np.nonzero(diff[0])
        assert rows.max() - rows.min() == 4 and cols.max() - cols.min() == 4
        assert (atk.x[i][diff] == 1.0).all()


def test_pattern_positions_cover_the_whole_image_and_stay_inside():
    rng = np.random.default_rng(0)
    x = np.zeros((500, 1, 8, 8), np.float32)
    out = paste_pattern(x, 5, 0.7, rng)
    assert np.allclose(out.sum(axis=(1, 2, 3)), 25 * 0.7)  # never clipped at the border
    assert out[:, 0, 0, 0].any() and out[:, 0, 7, 7].any()  # corners reachable


def test_pattern_reproducible(data):
    x, y = data
    kw = dict(target_class=0, attacker_class=1, fraction=0.5, pattern_size=3, pattern_value=1.0)
    a, b = pattern_attack(x, y, seed=5, **kw), pattern_attack(x, y, seed=5, **kw)
    np.testing.assert_array_equal(a.x, b.x)


def test_bad_parameters_are_explained(data):
    x, y = data
    with pytest.raises(PoisonDetectError, match="pattern_size = 13"):
        pattern_attack(
            x,
            y,
            target_class=0,
            attacker_class=1,
            fraction=0.5,
            pattern_size=13,
            pattern_value=1.0,
            seed=0,
        )
    with pytest.raises(PoisonDetectError, match="target_class = 9"):
        flip_attack(x, y, target_class=9, attacker_class=1, fraction=0.5, seed=0)
    with pytest.raises(PoisonDetectError, match="attacker_class = 11"):
        flip_attack(x, y, target_class=0, attacker_class=11, fraction=0.5, seed=0, num_classes=10)
