"""The population of models of one model-level cell (dataset x arch x scenario x seed).

One genuine model M; honest fine-tunes of M (each configured variant, ``replicates`` times, and
the sampled null: ``sampled.replicates`` fine-tunes that each draw their own hyperparameters); and
attacked fine-tunes (each attack kind x fraction x epochs, ``replicates`` times, on configured or
randomly drawn class pairs). Model names:

    genuine
    honest_<variant>_r<replicate>           e.g. honest_paper_r0, honest_sampled_r12
    <kind>_f<percent>_e<epochs>_r<replicate>  e.g. flip_f50_e10_r2 (50 % of the target class)

Every model has its own seed, derived from the cell's seed and its name, so replicates differ
(data order, attacked images, pattern positions) and the same config reproduces them. The first
``n_fit`` replicates of each honest variant fit and calibrate the detectors; the others measure the
false-alarm rate. Every draw (a sampled replicate's hyperparameters, a random class pair) comes
from the model's own seed. This module imports neither torch nor pandas: the workflow plans with
it.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from poisondetect.attacks import registry as attack_registry
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


SAMPLED = "sampled"  # the honest variant whose replicates draw their own hyperparameters
SHADOW = "shadow"  # the split of the attacked replicates that fit learned detectors
_DRAW_CODES = {"honest": 101, "pair": 102}  # seed streams of a model's draws


def honest_replicates(ml: dict, variant: str) -> int:
    """How many honest fine-tunes of ``variant`` a cell has (the sampled null's ``auto``:
    ``sampled_for_calibration``)."""
    if variant == SAMPLED:
        n = ml["finetune"]["sampled"]["replicates"]
        return sampled_for_calibration(ml) if n == "auto" else n
    return ml["finetune"]["replicates"]


def calibration_needs(ml: dict) -> int:
    """Honest fitting replicates the verdict needs to reach ``calibration.fpr``:
    ceil(1 / fpr) - 1 (``metrics.replicates_needed``; 19 at 5 %)."""
    from poisondetect.metrics import replicates_needed

    return replicates_needed(ml["calibration"]["fpr"])


def n_fit_honest(ml: dict, scenario: str) -> int:
    """The honest fitting replicates of a cell in ``scenario``, every variant's together."""
    share = ml["calibration"]["fit_share"]
    return sum(n_fit(honest_replicates(ml, v), share) for v in honest_variants(ml, scenario))


def calibration_warning(ml: dict) -> str | None:
    """What the workflow says at plan time when a cell's honest fitting replicates cannot give
    the verdict the configured false-alarm rate: the rate they guarantee, and how to reach it."""
    from poisondetect.metrics import guaranteed_fpr

    need, fpr = calibration_needs(ml), ml["calibration"]["fpr"]
    have = min(n_fit_honest(ml, s) for s in ml["scenarios"])
    if have >= need:
        return None
    return (
        f"model_level.calibration.fpr = {fpr:g}: {have} honest fitting replicates per cell "
        f"guarantee the verdict a false-alarm rate of {guaranteed_fpr(max(have, 1), fpr):.3g} at "
        f"best; it needs {need} (model_level.finetune.sampled.replicates: auto sizes the sampled "
        "null for it)"
    )


def sampled_for_calibration(ml: dict) -> int:
    """The smallest sampled null whose fitting replicates, with the named variants' (those with
    data: unseen left out: a standard scenario has none), reach ``calibration_needs``."""
    share = ml["calibration"]["fit_share"]
    named = sum(
        n_fit(ml["finetune"]["replicates"], share)
        for spec in ml["finetune"]["variants"].values()
        if spec["data"] != "unseen"
    )
    need = max(1, calibration_needs(ml) - named)
    r = 2
    while n_fit(r, share) < need:
        r += 1
    return r


def honest_variants(ml: dict, scenario: str) -> list[str]:
    """The honest variants that exist in a scenario (data: unseen needs new_data), the sampled
    null last (when it has replicates)."""
    named = [
        v
        for v, spec in ml["finetune"]["variants"].items()
        if spec["data"] != "unseen" or scenario == "new_data"
    ]
    return named + ([SAMPLED] if honest_replicates(ml, SAMPLED) else [])


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
        for r in range(honest_replicates(ml, v))
    ]
    names += [
        f"{pop}_r{r}" for pop in attack_populations(ml) for r in range(ml["attacks"]["replicates"])
    ]
    return names


def n_fit(replicates: int, fit_share: float) -> int:
    """How many replicates of an honest variant fit and calibrate (at least one, and one left to
    measure the false-alarm rate whenever there are two or more)."""
    return max(1, min(replicates - 1, round(replicates * fit_share))) if replicates > 1 else 1


def fit_counts(ml: dict) -> dict[str, int]:
    """How a cell's models split: ``n_fit`` of every honest variant (the sampled null's from its
    own replicates), and under ``SHADOW`` the shadow replicates of each attack population."""
    share = ml["calibration"]["fit_share"]
    variants = [*ml["finetune"]["variants"], SAMPLED]
    counts = {
        v: n_fit(honest_replicates(ml, v), share) for v in variants if honest_replicates(ml, v)
    }
    return {**counts, SHADOW: ml["attacks"]["shadow_replicates"]}


def split_of(spec: ModelSpec, n_fit_replicates: int | dict[str, int]) -> str:
    """fit (honest, sets thresholds and fits what learns from honest models), heldout (honest,
    measures false alarms), shadow (attacked, fits what learns from attacks, never evaluated),
    attack (attacked, evaluated), genuine. ``n_fit_replicates``: one count for every honest
    variant, or ``fit_counts`` (a count per variant, the shadow replicates under ``SHADOW``)."""
    counts = n_fit_replicates if isinstance(n_fit_replicates, dict) else None
    if spec.role == "honest":
        n = counts[spec.variant] if counts is not None else n_fit_replicates
        return "fit" if spec.replicate < n else "heldout"
    if spec.role == "attack" and counts is not None and spec.replicate < counts.get(SHADOW, 0):
        return SHADOW
    return spec.role


def evaluated_attacks(ml: dict) -> list[str]:
    """The attacked models of a cell that are evaluated (not shadows)."""
    k, n = ml["attacks"]["shadow_replicates"], ml["attacks"]["replicates"]
    return [f"{pop}_r{r}" for pop in attack_populations(ml) for r in range(k, n)]


def _draw_rng(cell_seed: int, name: str, stream: str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(model_seed(cell_seed, name), _DRAW_CODES[stream]))


def draw_honest(sampled: dict, name: str, cell_seed: int, scenario: str) -> dict:
    """The training hyperparameters of one replicate of the sampled honest null, drawn from the
    ranges in ``sampled`` (``model_level.finetune.sampled``) with a seed of its own (its name and
    the cell's seed): the same replicate always draws the same values, replicates differ.

    ``lr_factor`` and ``weight_decay`` are drawn log-uniformly (a zero lower bound of the weight
    decay: zero or log-uniform above ``weight_decay[1] / 100``, evenly), ``epochs`` uniformly
    between its bounds (inclusive); ``batch_size``, ``optimizer``, ``augment`` and ``data``
    uniformly among the listed choices (``unseen`` only in the new-data scenario)."""
    rng = _draw_rng(cell_seed, name, "honest")
    lo, hi = sampled["lr_factor"]
    lr_factor = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    e_lo, e_hi = sampled["epochs"]
    epochs = int(rng.integers(e_lo, e_hi + 1))
    batch_size = int(rng.choice(sampled["batch_size"]))
    w_lo, w_hi = sampled["weight_decay"]
    if w_lo <= 0:
        zero = rng.random() < 0.5
        w = (
            0.0
            if zero or w_hi <= 0
            else float(np.exp(rng.uniform(np.log(w_hi / 100), np.log(w_hi))))
        )
    else:
        w = float(np.exp(rng.uniform(np.log(w_lo), np.log(w_hi))))
    optimizer = str(rng.choice(sampled["optimizer"]))
    augment = bool(rng.choice(sampled["augment"]))
    data = [d for d in sampled["data"] if d != "unseen" or scenario == "new_data"] or ["all"]
    return {
        "epochs": epochs,
        "lr_factor": lr_factor,
        "batch_size": batch_size,
        "weight_decay": w,
        "optimizer": optimizer,
        "augment": augment,
        "data": str(rng.choice(data)),
    }


def attack_classes(
    attack: dict,
    name: str,
    cell_seed: int,
    num_classes: int,
    *,
    shadow: bool = False,
    exclude: set[tuple[int, int]] | frozenset = frozenset(),
) -> tuple[int, int]:
    """The (target, attacker) classes of one attacked model: the configured ones, or, where the
    config says ``random``, drawn with a seed of the model's own (distinct classes; the same model
    always draws the same pair, replicates differ). A shadow attack always draws its pair, among
    the pairs not in ``exclude`` (the evaluated attacks' pairs)."""
    target, attacker = attack["target_class"], attack["attacker_class"]
    rng = _draw_rng(cell_seed, name, "pair")
    if shadow:
        pairs = [
            (t, a)
            for t in range(num_classes)
            for a in range(num_classes)
            if t != a and (t, a) not in exclude
        ]
        if not pairs:
            raise PoisonDetectError(
                f"{name}: every class pair is used by an evaluated attack; no pair is left for "
                "the shadow attacks (fewer attacks.replicates or shadow_replicates: 0)"
            )
        return pairs[int(rng.integers(len(pairs)))]
    if target == "random":
        choices = [c for c in range(num_classes) if c != attacker]
        target = int(rng.choice(choices))
    if attacker == "random":
        attacker = int(rng.choice([c for c in range(num_classes) if c != target]))
    if not (0 <= target < num_classes and 0 <= attacker < num_classes) or target == attacker:
        raise PoisonDetectError(
            f"{name}: target class {target} and attacker class {attacker} must be distinct "
            f"classes of the data set's {num_classes}"
        )
    return int(target), int(attacker)


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


def _words(items) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def describe_populations(ml: dict) -> str:
    """The populations of every cell, in prose (the report's captions quote it)."""
    ft, atk = ml["finetune"], ml["attacks"]
    honest = (
        f"{ft['replicates']} honest fine-tunes of each of the variants {_words(ft['variants'])}"
    )
    sampled = ft["sampled"]
    if sampled["replicates"]:
        lo, hi = sampled["lr_factor"]
        honest += (
            f", and {sampled['replicates']} of the sampled null (each draws its own learning rate "
            f"x {lo:g}-{hi:g}, {sampled['epochs'][0]}-{sampled['epochs'][1]} epochs, batch size, "
            f"weight decay, optimizer, augmentation and data)"
        )
    pairs = (
        "each on a class pair of its own"
        if "random" in (atk["target_class"], atk["attacker_class"])
        else f"class {atk['target_class']} relabelled {atk['attacker_class']}"
    )
    titles = attack_registry.titles()
    kinds = _words(titles.get(k, k) for k in atk["kinds"])
    shadows = atk["shadow_replicates"]
    attacked = (
        f"{atk['replicates']} attacked fine-tunes"
        + (f" (the first {shadows} of them shadow attacks, never evaluated)" if shadows else "")
        + f" of each of the attacks {kinds} on {_words(f'{percent(f)} %' for f in atk['fraction'])}"
        f" of the target class for {_words(atk['epochs'])} epochs, {pairs}"
    )
    seeds = _words(ml["seeds"])
    return (
        f"Every genuine model (data set x architecture x scenario x seed; seeds {seeds}) has "
        f"{honest}; and {attacked}."
    )


def describe_variants(ml: dict) -> str:
    """The named honest variants' settings, in prose (the report's Table 1 caption)."""
    parts = []
    for name, v in ml["finetune"]["variants"].items():
        extra = [f"{k} {v[k]}" for k in ("optimizer", "batch_size", "weight_decay") if v.get(k)]
        parts.append(
            f"{name}: {v['epochs']} epochs at lr x {v['lr_factor']:g} on {v['data']} data"
            + (", augmented" if v["augment"] else "")
            + (f" ({', '.join(extra)})" if extra else "")
        )
    return "; ".join(parts)
