"""Poisoning attacks.

``svm``: sample-level attacks on a binary SVM (flip / optimal / semi-optimal / mixed), which add
poisons to a round's training set; ``gradient``: the optimal attack's KKT gradient. The model-level
attacks on image data sets are kinds of ``poisondetect.attacks.registry`` (``labels``: the
flipping and pattern-addition attacks they started from). The sample-level names below are
imported lazily: ``poisondetect.names`` reads the registry while the workflow plans, without
scikit-learn.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "validation_hinge_gradient": "poisondetect.attacks.gradient",
    **{
        n: "poisondetect.attacks.svm"
        for n in (
            "ATTACK_OPTIONS",
            "KINDS",
            "flip_attack",
            "gradient_attack",
            "mixed_attack",
            "mixed_split",
            "optimal_attack",
            "poison",
            "semi_optimal_attack",
        )
    },
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
