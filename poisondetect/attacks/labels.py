"""Model-level poisoning attacks on an image training set (El Moadine et al.).

- Flipping attack (FA): a share of the target class's images get the attacker's label.
- Pattern addition attack (PAA): the same share get a square of constant pixels pasted at a random
  position (fully inside the image) and the attacker's label.

Both return a new (x, y) and the indices of the attacked images; the input arrays are not modified.
The chosen images and positions depend only on the seed.
"""

from __future__ import annotations

import numpy as np

from poisondetect.attacks.base import AttackedSet, _check_classes
from poisondetect.errors import PoisonDetectError

__all__ = ["AttackedSet", "flip_attack", "paste_pattern", "pattern_attack"]


def choose_attack_set(
    y: np.ndarray, target_class: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of round(fraction * |target class|) images of the target class."""
    candidates = np.flatnonzero(y == target_class)
    if len(candidates) == 0:
        raise PoisonDetectError(
            f"attacks.target_class = {target_class}: no training image has this label "
            f"(labels present: {sorted(set(np.unique(y).tolist()))})"
        )
    n = int(round(fraction * len(candidates)))
    return np.sort(rng.choice(candidates, size=max(n, 1), replace=False))


def flip_attack(
    x: np.ndarray,
    y: np.ndarray,
    *,
    target_class: int,
    attacker_class: int,
    fraction: float,
    seed: int,
    num_classes: int | None = None,
) -> AttackedSet:
    """Relabel ``fraction`` of the target class's images as ``attacker_class``; nothing else changes."""
    _check_classes(y, attacker_class, num_classes)
    rng = np.random.default_rng(seed)
    idx = choose_attack_set(y, target_class, fraction, rng)
    y2 = y.copy()
    y2[idx] = attacker_class
    return AttackedSet(x=x, y=y2, attacked=idx)


def paste_pattern(x: np.ndarray, size: int, value: float, rng: np.random.Generator) -> np.ndarray:
    """Copy of the images (N, C, H, W) with a size x size square of ``value`` at a random position
    fully inside each image (all channels)."""
    n, _, h, w = x.shape
    if size > min(h, w):
        raise PoisonDetectError(
            f"attacks.pattern_size = {size} does not fit in {h}x{w} images; choose at most {min(h, w)}"
        )
    out = x.copy()
    rows = rng.integers(0, h - size + 1, size=n)
    cols = rng.integers(0, w - size + 1, size=n)
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        out[i, :, r : r + size, c : c + size] = value
    return out


def pattern_attack(
    x: np.ndarray,
    y: np.ndarray,
    *,
    target_class: int,
    attacker_class: int,
    fraction: float,
    pattern_size: int,
    pattern_value: float,
    seed: int,
    num_classes: int | None = None,
) -> AttackedSet:
    """Paste the pattern on ``fraction`` of the target class's images and relabel them."""
    _check_classes(y, attacker_class, num_classes)
    rng = np.random.default_rng(seed)
    idx = choose_attack_set(y, target_class, fraction, rng)
    x2 = x.copy()
    x2[idx] = paste_pattern(x[idx], pattern_size, pattern_value, rng)
    y2 = y.copy()
    y2[idx] = attacker_class
    return AttackedSet(x=x2, y=y2, attacked=idx)
