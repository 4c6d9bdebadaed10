"""The model-level attack protocol: ``Attack`` (one class per kind: its name, label, strength
settings, ``poison`` and how its success is measured), the poisoned set it returns, and the
checks every kind shares. The kinds are in ``attacks/families.py``, registered by name in
``attacks/registry.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from poisondetect.errors import PoisonDetectError

_TRIGGER_STREAM = 31  # seed stream of a model's own trigger (blend pattern, warping field)
_PGD_STREAM = 32  # seed stream of the clean-label perturbation's random start


@dataclass
class AttackedSet:
    x: np.ndarray
    y: np.ndarray
    attacked: np.ndarray  # indices of the attacked images in x


def _check_classes(y: np.ndarray, attacker_class: int, num_classes: int | None) -> None:
    k = num_classes if num_classes is not None else int(y.max()) + 1
    if not 0 <= attacker_class < k:
        raise PoisonDetectError(
            f"attacks.attacker_class = {attacker_class} is not a class of this data set (0..{k - 1})"
        )


def _budget(y: np.ndarray, target_class: int, fraction: float) -> int:
    n_target = int((y == target_class).sum())
    if n_target == 0:
        raise PoisonDetectError(
            f"attacks.target_class = {target_class}: no training image has this label "
            f"(labels present: {sorted(set(np.unique(y).tolist()))})"
        )
    return max(int(round(fraction * n_target)), 1)


class Attack:
    """One model-level attack kind (subclass and register it)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    title: ClassVar[str] = ""  # in prose (the report's captions); default: the label
    description: ClassVar[str] = ""
    settings: ClassVar[dict[str, object]] = {}  # attacks.<key> -> default
    # which test images measure success: "target" (the target class's: source-specific) or
    # "others" (every class but the attacker's: all-to-one, clean-label)
    sources: ClassVar[str] = "target"
    needs_model: ClassVar[bool] = False  # poison() uses M (clean-label's PGD)

    def options(self, block: dict) -> dict:
        """This kind's settings from an attack block (defaults where it has none)."""
        return {k: block.get(k, d) for k, d in self.settings.items()}

    # -- poisoning ------------------------------------------------------------------------------
    def candidates(self, y: np.ndarray, target_class: int, attacker_class: int) -> np.ndarray:
        """Training images the attacker may poison."""
        return np.flatnonzero(y == target_class)

    def choose(self, y, target_class, attacker_class, fraction, rng) -> np.ndarray:
        n = _budget(y, target_class, fraction)
        pool = self.candidates(y, target_class, attacker_class)
        if not len(pool):
            raise PoisonDetectError(f"{self.name}: no training image can be poisoned")
        return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))

    def trigger(self, x: np.ndarray, *, seed: int, **options) -> np.ndarray:
        """Triggered copies of images (N, C, H, W); the identity for a trigger-less attack."""
        return x.copy()

    def relabel(self, y: np.ndarray, idx: np.ndarray, attacker_class: int) -> np.ndarray:
        y2 = y.copy()
        y2[idx] = attacker_class
        return y2

    def poison(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target_class: int,
        attacker_class: int,
        fraction: float,
        seed: int,
        num_classes: int | None = None,
        model=None,
        device="cpu",
        **block,
    ) -> AttackedSet:
        """A poisoned copy of (x, y); the input arrays are not modified."""
        _check_classes(y, attacker_class, num_classes)
        opts = self.options(block)
        rng = np.random.default_rng(seed)
        idx = self.choose(y, target_class, attacker_class, fraction, rng)
        x2 = x.copy()
        x2[idx] = self.trigger(x[idx], seed=seed, **opts)
        return AttackedSet(x=x2, y=self.relabel(y, idx, attacker_class), attacked=idx)

    # -- success --------------------------------------------------------------------------------
    def success_images(
        self,
        x_test: np.ndarray,
        y_test: np.ndarray,
        *,
        target_class: int,
        attacker_class: int,
        seed: int,
        **block,
    ) -> np.ndarray:
        """The held-out images success is measured on: the source classes' test images with the
        trigger (``seed``: the model's seed, so a model's own trigger)."""
        mask = y_test == target_class if self.sources == "target" else y_test != attacker_class
        xs = x_test[mask]
        return self.trigger(xs, seed=seed, **self.options(block)) if len(xs) else xs

    @staticmethod
    def success(preds: np.ndarray, attacker_class: int) -> float | None:
        """The share of the success images classified as the attacker's class."""
        preds = np.asarray(preds)
        return float((preds == attacker_class).mean()) if len(preds) else None


# -- the kinds --------------------------------------------------------------------------------------
