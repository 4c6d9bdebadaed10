"""The population of models of one model-level cell (dataset x arch x scenario x seed).

One genuine model M; honest fine-tunes of M (each configured variant, ``replicates`` times); and
attacked fine-tunes (each attack kind x fraction x epochs, ``replicates`` times). Model names:

    genuine
    honest_<variant>_r<replicate>           e.g. honest_paper_r0
    <kind>_f<percent>_e<epochs>_r<replicate>  e.g. flip_f50_e10_r2 (50 % of the target class)

Every model has its own seed, derived from the cell's seed and its name, so replicates differ
(data order, attacked images, pattern positions) and the same config reproduces them. The first
``n_fit`` replicates of each honest variant fit and calibrate the detectors; the others measure the
false-alarm rate. This module imports neither torch nor pandas: the workflow plans with it.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from poisondetect.errors import PoisonDetectError
from poisondetect.seeds import derive_seed

ATTACK_KINDS = ("flip", "pattern")
MODEL_PATTERN = r"genuine|honest_[A-Za-z0-9][A-Za-z0-9_-]*_r\d+|(flip|pattern)_f[0-9.]+_e\d+_r\d+"
_HONEST = re.compile(r"^honest_(?P<variant>[A-Za-z0-9][A-Za-z0-9_-]*)_r(?P<rep>\d+)$")
_ATTACK = re.compile(r"^(?P<kind>flip|pattern)_f(?P<pct>[0-9.]+)_e(?P<epochs>\d+)_r(?P<rep>\d+)$")


@dataclass(frozen=True)
class ModelSpec:
    """What a model name says: role (genuine / honest / attack), variant (the honest variant's
    name, or the attack kind), replicate, and for attacks the fraction and epochs."""

    name: str
    role: str
    variant: str
    replicate: int | None = None
    fraction: float | None = None
    epochs: int | None = None


def percent(fraction: float) -> str:
    """0.05 -> "5", 0.5 -> "50", 0.125 -> "12.5" (the fraction as it appears in model names)."""
    return f"{round(fraction * 100, 6):g}"


def honest_name(variant: str, replicate: int) -> str:
    return f"honest_{variant}_r{replicate}"


def attack_name(kind: str, fraction: float, epochs: int, replicate: int) -> str:
    return f"{kind}_f{percent(fraction)}_e{epochs}_r{replicate}"


def parse_model(name: str) -> ModelSpec:
    if name == "genuine":
        return ModelSpec("genuine", "genuine", "genuine")
    if m := _HONEST.match(name):
        return ModelSpec(name, "honest", m["variant"], int(m["rep"]))
    if m := _ATTACK.match(name):
        return ModelSpec(
            name, "attack", m["kind"], int(m["rep"]), float(m["pct"]) / 100, int(m["epochs"])
        )
    raise PoisonDetectError(
        f"bad model name {name!r}: expected genuine, honest_<variant>_r<N> or "
        "<flip|pattern>_f<percent>_e<epochs>_r<N>"
    )


def honest_variants(ml: dict, scenario: str) -> list[str]:
    """The honest variants that exist in a scenario (data: unseen needs new_data)."""
    return [
        v
        for v, spec in ml["finetune"]["variants"].items()
        if spec["data"] != "unseen" or scenario == "new_data"
    ]


def cell_models(ml: dict, scenario: str) -> list[str]:
    """Every model name of a cell, genuine first, then the honest and the attacked populations."""
    names = ["genuine"]
    names += [
        honest_name(v, r)
        for v in honest_variants(ml, scenario)
        for r in range(ml["finetune"]["replicates"])
    ]
    atk = ml["attacks"]
    names += [
        attack_name(k, f, e, r)
        for k in atk["kinds"]
        for f in atk["fraction"]
        for e in atk["epochs"]
        for r in range(atk["replicates"])
    ]
    return names


def n_fit(replicates: int, fit_share: float) -> int:
    """How many replicates of each honest variant fit and calibrate (at least one, and one left
    to measure the false-alarm rate whenever there are two or more)."""
    return max(1, min(replicates - 1, round(replicates * fit_share))) if replicates > 1 else 1


def split_of(spec: ModelSpec, n_fit_replicates: int) -> str:
    """fit (honest, sets thresholds), heldout (honest, measures false alarms), attack, genuine."""
    if spec.role == "honest":
        return "fit" if spec.replicate < n_fit_replicates else "heldout"
    return spec.role


def model_seed(cell_seed: int, name: str) -> int:
    """The seed of one model of a cell, from the cell's seed and the model's name."""
    return derive_seed(cell_seed, zlib.crc32(name.encode()))


def attack_strength(spec: ModelSpec) -> str:
    """A short label of an attack population: "FA 50% e10", "PAA 5% e5"."""
    label = {"flip": "FA", "pattern": "PAA"}[spec.variant]
    return f"{label} {percent(spec.fraction)}% e{spec.epochs}"
