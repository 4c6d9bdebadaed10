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
from poisondetect.names import MODEL_ATTACKS, attack_label, regex
from poisondetect.seeds import derive_seed

# the workflow's wildcard constraints ({model}, {honest}, {attack_population}) come from these
VARIANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # an honest variant's name
HONEST_PATTERN = rf"honest_{VARIANT_PATTERN}"  # an honest population
ATTACK_PATTERN = rf"(?:{regex(MODEL_ATTACKS)})_f[0-9.]+_e\d+"  # an attack population
FINETUNE_PATTERN = rf"{HONEST_PATTERN}_r\d+|{ATTACK_PATTERN}_r\d+"  # a fine-tuned model
MODEL_PATTERN = rf"genuine|{FINETUNE_PATTERN}"
# the files of one model in its cell's directory (the rules declare the same paths)
MODEL_FILES = {
    "model": "models/{model}.safetensors",
    "metrics": "eval/{model}.json",
    "activations": "activations/{model}.parquet",
}
_HONEST = re.compile(rf"^honest_(?P<variant>{VARIANT_PATTERN})_r(?P<rep>\d+)$")
_ATTACK = re.compile(
    rf"^(?P<kind>{regex(MODEL_ATTACKS)})_f(?P<pct>[0-9.]+)_e(?P<epochs>\d+)_r(?P<rep>\d+)$"
)


@dataclass(frozen=True)
class ModelSpec:
    """What a model name says: role (genuine / honest / attack), the honest variant (honest models
    only), the attack kind (attacked models only), the replicate, and for attacks the fraction and
    epochs."""

    name: str
    role: str
    variant: str | None = None
    attack: str | None = None
    replicate: int | None = None
    fraction: float | None = None
    epochs: int | None = None


def percent(fraction: float) -> str:
    """0.05 -> "5", 0.5 -> "50", 0.125 -> "12.5" (the fraction as it appears in model names)."""
    return f"{round(fraction * 100, 6):g}"


def honest_name(variant: str, replicate: int) -> str:
    return f"honest_{variant}_r{replicate}"


def attack_population(kind: str, fraction: float, epochs: int) -> str:
    """The name of an attack population: flip_f50_e10."""
    return f"{kind}_f{percent(fraction)}_e{epochs}"


def attack_name(kind: str, fraction: float, epochs: int, replicate: int) -> str:
    return f"{attack_population(kind, fraction, epochs)}_r{replicate}"


def parse_model(name: str) -> ModelSpec:
    if name == "genuine":
        return ModelSpec("genuine", "genuine")
    if m := _HONEST.match(name):
        return ModelSpec(name, "honest", variant=m["variant"], replicate=int(m["rep"]))
    if m := _ATTACK.match(name):
        return ModelSpec(
            name,
            "attack",
            attack=m["kind"],
            replicate=int(m["rep"]),
            fraction=float(m["pct"]) / 100,
            epochs=int(m["epochs"]),
        )
    raise PoisonDetectError(
        f"bad model name {name!r}: expected genuine, honest_<variant>_r<N> or "
        f"<{'|'.join(MODEL_ATTACKS)}>_f<percent>_e<epochs>_r<N>"
    )


def honest_variants(ml: dict, scenario: str) -> list[str]:
    """The honest variants that exist in a scenario (data: unseen needs new_data)."""
    return [
        v
        for v, spec in ml["finetune"]["variants"].items()
        if spec["data"] != "unseen" or scenario == "new_data"
    ]


def attack_populations(ml: dict) -> list[str]:
    """Every attack population's name (kind x fraction x epochs), in the config's order."""
    atk = ml["attacks"]
    return [
        attack_population(k, f, e)
        for k in atk["kinds"]
        for f in atk["fraction"]
        for e in atk["epochs"]
    ]


def cell_models(ml: dict, scenario: str) -> list[str]:
    """Every model name of a cell, genuine first, then the honest and the attacked populations."""
    names = ["genuine"]
    names += [
        honest_name(v, r)
        for v in honest_variants(ml, scenario)
        for r in range(ml["finetune"]["replicates"])
    ]
    names += [
        f"{pop}_r{r}" for pop in attack_populations(ml) for r in range(ml["attacks"]["replicates"])
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


def population_label(spec: ModelSpec) -> str:
    """The label of a model's population in tables, figures and the console: "Genuine",
    "Honest paper", "FA 50% e10", "PAA 5% e5"."""
    if spec.role == "genuine":
        return "Genuine"
    if spec.role == "honest":
        return f"Honest {spec.variant}"
    return f"{attack_label(spec.attack)} {percent(spec.fraction)}% e{spec.epochs}"
