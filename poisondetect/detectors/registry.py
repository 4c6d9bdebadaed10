"""Detector registry: config name -> class, per level ("sample" or "model").

Entries are import strings (``"module:Class"``) so that planning the workflow's job graph imports
no torch; a test or a plug-in may also register a class object directly with ``register``. Adding a
detector is one class, one entry here and its config block in
``poisondetect/schemas/config.schema.yaml``.
"""

from __future__ import annotations

import importlib

from poisondetect.errors import PoisonDetectError

LEVELS = ("sample", "model")

# name (a config key: sample_level.<name> / model_level.detectors.<name>, and the `detector` column
# of the tables) -> (class, label in tables and figures). At the sample level the order is the
# order of the stage's outputs.
_REGISTRY: dict[str, dict[str, tuple[str | type, str]]] = {
    "sample": {
        "cae_plus": ("poisondetect.detectors.cae:CAEPlus", "CAE+"),
        "cae": ("poisondetect.detectors.cae:CAE", "CAE"),
        "rae": ("poisondetect.detectors.cae:RAE", "RAE"),
        "od": ("poisondetect.detectors.baselines:OD", "OD"),
        "magnet": ("poisondetect.detectors.baselines:MagNet", "MagNet"),
        "magnet_reformer": ("poisondetect.detectors.baselines:MagNetReformer", "MagNet+reformer"),
        "spectral_signatures": (
            "poisondetect.detectors.spectral:SpectralSignatures",
            "Spectral signatures",
        ),
        "activation_clustering": (
            "poisondetect.detectors.spectral:ActivationClustering",
            "Activation clustering",
        ),
        "knn_sanitization": (
            "poisondetect.detectors.sanitization:KNNLabelSanitization",
            "kNN label sanitization",
        ),
        "loss_filter": ("poisondetect.detectors.sanitization:LossFilter", "Loss filtering"),
    },
    "model": {
        "ae_mean": ("poisondetect.detectors.model_level:AEMean", "ae_mean"),
        "ae_class": ("poisondetect.detectors.model_level:AEClass", "ae_class"),
        "activation_drift": (
            "poisondetect.detectors.model_level:ActivationDrift",
            "activation_drift",
        ),
        "weight_distance": ("poisondetect.detectors.model_level:WeightDistance", "weight_distance"),
        "final_layer": ("poisondetect.detectors.weights:FinalLayer", "final_layer"),
        "accuracy_drop": ("poisondetect.detectors.model_level:AccuracyDrop", "accuracy_drop"),
        "prediction_change": (
            "poisondetect.detectors.model_level:PredictionChange",
            "prediction_change",
        ),
        "mahalanobis": ("poisondetect.detectors.model_level:Mahalanobis", "mahalanobis"),
        "ae_class_profile": ("poisondetect.detectors.profiles:AEClassProfile", "ae_class_profile"),
        "drift_class_profile": (
            "poisondetect.detectors.profiles:DriftClassProfile",
            "drift_class_profile",
        ),
        "prediction_flow": ("poisondetect.detectors.profiles:PredictionFlow", "prediction_flow"),
        "combined": ("poisondetect.detectors.combined:Combined", "combined"),
        "trigger_inversion": (
            "poisondetect.detectors.trigger_inversion:TriggerInversion",
            "trigger_inversion",
        ),
        "differential_trigger_inversion": (
            "poisondetect.detectors.trigger_inversion:DifferentialTriggerInversion",
            "differential_trigger_inversion",
        ),
    },
}


def register(level: str, name: str, cls: str | type, label: str | None = None) -> None:
    """Add (or replace) a detector under ``name``; ``cls`` is a class or a "module:Class" string;
    ``label`` names it in tables and figures (default: ``name``)."""
    if level not in LEVELS:
        raise PoisonDetectError(f"unknown detector level {level!r}; expected one of {LEVELS}")
    _REGISTRY[level][name] = (cls, label or name)


def unregister(level: str, name: str) -> None:
    _REGISTRY[level].pop(name, None)


def names(level: str) -> list[str]:
    """The registered detector names of one level, in registration order."""
    return list(_REGISTRY[level])


def label(level: str, name: str) -> str:
    """How tables and figures name a detector (its name when it is not registered)."""
    entry = _REGISTRY[level].get(name)
    return entry[1] if entry else name


def get(level: str, name: str) -> type:
    """The detector class registered under ``name``."""
    try:
        entry = _REGISTRY[level][name][0]
    except KeyError:
        raise PoisonDetectError(
            f"unknown {level}-level detector {name!r}; known: {', '.join(names(level))}"
        ) from None
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


def build(level: str, name: str, params: dict | None = None, **extra):
    """A new, unfitted detector from its config block (``params``) plus run settings (``extra``,
    e.g. seed, device, shared settings); an ``extra`` goes only to a detector whose constructor
    takes it, and the config block wins over an ``extra`` of the same name."""
    cls = get(level, name)
    if hasattr(cls, "_get_param_names"):  # scikit-learn style: the constructor's parameters
        accepted = set(cls._get_param_names())
        extra = {k: v for k, v in extra.items() if k in accepted}
    return cls(**{**extra, **(params or {})})
