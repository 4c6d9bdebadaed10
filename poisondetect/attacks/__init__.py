"""Poisoning attacks.

``svm``: sample-level attacks on a binary SVM (flip / optimal / semi-optimal / mixed), which add
poisons to a round's training set; ``gradient``: the optimal attack's KKT gradient. The model-level attacks on image data sets live in
``poisondetect.attacks.labels`` (import it directly).
"""

from poisondetect.attacks.gradient import validation_hinge_gradient
from poisondetect.attacks.svm import (
    ATTACK_OPTIONS,
    KINDS,
    flip_attack,
    gradient_attack,
    mixed_attack,
    mixed_split,
    optimal_attack,
    poison,
    semi_optimal_attack,
)

__all__ = [
    "ATTACK_OPTIONS",
    "KINDS",
    "flip_attack",
    "gradient_attack",
    "mixed_attack",
    "mixed_split",
    "optimal_attack",
    "poison",
    "semi_optimal_attack",
    "validation_hinge_gradient",
]
