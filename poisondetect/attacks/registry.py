"""Model-level attack registry: attack kind (a config name and the first part of an attacked
model's name) -> the class that poisons a training set and says how its success is measured.

Every kind is one class (``attacks/families.py``, on ``attacks/base.py``'s protocol) with

- ``name`` (``model_level.attacks.kinds``, the ``attack`` column of the tables), ``label`` (tables,
  figures, the console) and ``description``;
- ``settings``: its strength settings, keys of the ``model_level.attacks`` block (each named
  ``<kind>_<setting>`` so a job passes a kind only its own keys) with their defaults; the config
  schema declares the same keys (``tests/test_attack_registry.py`` checks it);
- ``poison(x, y, *, target_class, attacker_class, fraction, seed, ...)``: a poisoned copy of a
  training set (``AttackedSet``: x, y, the attacked indices), from the seed alone;
- ``success_images(x_test, y_test, ...)``: the held-out images its success is measured on (the
  source classes' test images, with the trigger where there is one) and ``success(preds, ...)``:
  the share of them classified as the attacker's class.

``target_class`` is the class whose images are attacked (the source class of a source-specific
attack), ``attacker_class`` the class the attacker wants (the backdoor's target). ``fraction``
sets the poison budget: round(fraction x |target class|) training images, for every kind (an
all-to-one attack draws them from every class but the attacker's; clean-label from the attacker's
class), so kinds of the same fraction poison as many images.

The rules and stages never branch on a kind's name: they call these methods. Nothing heavy is
imported at module level (``poisondetect.names`` takes the kinds from here; the workflow plans
with it); torch is imported inside the methods that need it (warping, clean-label PGD).
"""

from __future__ import annotations

import re

from poisondetect.attacks.base import Attack
from poisondetect.attacks.families import (
    Adaptive,
    BadNets,
    Blend,
    CleanLabel,
    Flip,
    Pattern,
    WaNet,
)
from poisondetect.errors import PoisonDetectError

__all__ = ["Attack", "apply_attack", "get", "names", "register", "unregister"]


# -- the registry -----------------------------------------------------------------------------------
_BAD_NAME = re.compile(r"_f[0-9.]|_e\d|_r\d|^honest|^genuine")
_REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Add (or replace) an attack kind. Its name must be lower-case words joined by underscores
    and hold nothing the model-name parser reads (``_f<n>``, ``_e<n>``, ``_r<n>``); its settings
    must be ``<name>_<setting>`` keys."""
    if not re.fullmatch(r"[a-z][a-z0-9]*(?:_[a-z][a-z0-9]*)*", cls.name) or _BAD_NAME.search(
        cls.name
    ):
        raise PoisonDetectError(f"attack kind {cls.name!r}: not a usable model-name part")
    bad = [k for k in cls.settings if not k.startswith(f"{cls.name}_")]
    if bad:
        raise PoisonDetectError(f"attack kind {cls.name!r}: settings {bad} lack its prefix")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


for _cls in (Flip, Pattern, BadNets, Blend, WaNet, CleanLabel, Adaptive):
    register(_cls)


def names() -> list[str]:
    """The registered kinds, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> Attack:
    """A new instance of the kind registered under ``name``."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise PoisonDetectError(
            f"unknown model-level attack {name!r}; known: {', '.join(_REGISTRY)}"
        ) from None


def labels() -> dict[str, str]:
    """kind -> its label in tables (flip -> FA, pattern -> PAA)."""
    return {n: c.label for n, c in _REGISTRY.items()}


def titles() -> dict[str, str]:
    """kind -> how prose names it (flip -> "flipping (FA)")."""
    return {n: c.title or c.label for n, c in _REGISTRY.items()}


def setting_keys() -> set[str]:
    """Every kind's settings (keys of the attack block only one kind reads)."""
    return {k for c in _REGISTRY.values() for k in c.settings}


def job_settings(kind: str, block: dict) -> dict:
    """The attack block one kind's fine-tune job needs: the shared keys and its own settings."""
    own = set(_REGISTRY[kind].settings) if kind in _REGISTRY else set()
    others = setting_keys() - own
    return {k: v for k, v in block.items() if k not in others}


def apply_attack(kind: str, x, y, **params):
    """Poison (x, y) with the registered kind ``kind`` (an ``AttackedSet``); the settings of
    other kinds are ignored."""
    return get(kind).poison(x, y, **params)
