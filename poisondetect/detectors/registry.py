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
# of the tables) -> (class, label in tables and figures, the statistics it emits). At the sample
# level the order is the order of the stage's outputs. The statistics are "score" (the main score:
# ``score_samples``) and the names of ``sub_scores``; they are declared here, not read from the
# class, so that the workflow checks the names a config uses at plan time without importing the
# detectors (and torch); tests/test_detector_protocol.py checks them against what each class emits.
_REGISTRY: dict[str, dict[str, tuple[str | type, str, tuple[str, ...]]]] = {
    "sample": {
        "cae_plus": ("poisondetect.detectors.cae:CAEPlus", "CAE+", ("score", "re", "ce")),
        "cae": ("poisondetect.detectors.cae:CAE", "CAE", ("score", "re", "ce")),
        "rae": ("poisondetect.detectors.cae:RAE", "RAE", ("score",)),
        "od": ("poisondetect.detectors.baselines:OD", "OD", ("score",)),
        "magnet": ("poisondetect.detectors.baselines:MagNet", "MagNet", ("score", "e1", "e2")),
        "magnet_reformer": (
            "poisondetect.detectors.baselines:MagNetReformer",
            "MagNet+reformer",
            ("score", "e1", "e2"),
        ),
        "spectral_signatures": (
            "poisondetect.detectors.spectral:SpectralSignatures",
            "Spectral signatures",
            ("score",),
        ),
        "activation_clustering": (
            "poisondetect.detectors.spectral:ActivationClustering",
            "Activation clustering",
            ("score", "d_small", "d_big"),
        ),
        "knn_sanitization": (
            "poisondetect.detectors.sanitization:KNNLabelSanitization",
            "kNN label sanitization",
            ("score", "neighbour_disagreement", "neighbour_distance"),
        ),
        "loss_filter": (
            "poisondetect.detectors.sanitization:LossFilter",
            "Loss filtering",
            ("score", "margin", "loss"),
        ),
    },
    "model": {
        "ae_mean": (
            "poisondetect.detectors.model_level:AEMean",
            "ae_mean",
            ("score", "paper_margin"),
        ),
        "ae_class": ("poisondetect.detectors.model_level:AEClass", "ae_class", ("score",)),
        "activation_drift": (
            "poisondetect.detectors.model_level:ActivationDrift",
            "activation_drift",
            ("score", "worst_class"),
        ),
        "weight_distance": (
            "poisondetect.detectors.model_level:WeightDistance",
            "weight_distance",
            ("score", "last_layer"),
        ),
        "final_layer": (
            "poisondetect.detectors.weights:FinalLayer",
            "final_layer",
            ("score", "delta", "norm", "cosine", "bias", "honest_z"),
        ),
        "accuracy_drop": (
            "poisondetect.detectors.model_level:AccuracyDrop",
            "accuracy_drop",
            ("score",),
        ),
        "prediction_change": (
            "poisondetect.detectors.model_level:PredictionChange",
            "prediction_change",
            ("score", "worst_class"),
        ),
        "mahalanobis": (
            "poisondetect.detectors.model_level:Mahalanobis",
            "mahalanobis",
            ("score", "worst_class"),
        ),
        "ae_class_profile": (
            "poisondetect.detectors.profiles:AEClassProfile",
            "ae_class_profile",
            ("score", "peak"),
        ),
        "drift_class_profile": (
            "poisondetect.detectors.profiles:DriftClassProfile",
            "drift_class_profile",
            ("score",),
        ),
        "prediction_flow": (
            "poisondetect.detectors.profiles:PredictionFlow",
            "prediction_flow",
            ("score", "largest"),
        ),
        "combined": ("poisondetect.detectors.combined:Combined", "combined", ("score",)),
        "trigger_inversion": (
            "poisondetect.detectors.trigger_inversion:TriggerInversion",
            "trigger_inversion",
            ("score", "anomaly_index", "small_trigger", "honest_z"),
        ),
        "differential_trigger_inversion": (
            "poisondetect.detectors.trigger_inversion:DifferentialTriggerInversion",
            "differential_trigger_inversion",
            ("score", "anomaly_index", "small_trigger", "honest_z"),
        ),
        "max_margin": (
            "poisondetect.detectors.max_margin:MaxMargin",
            "max_margin",
            ("score", "honest_z"),
        ),
        "neuron_stimulation": (
            "poisondetect.detectors.neuron_stimulation:NeuronStimulation",
            "neuron_stimulation",
            ("score", "honest_z"),
        ),
    },
}


def register(
    level: str,
    name: str,
    cls: str | type,
    label: str | None = None,
    emits: tuple[str, ...] = ("score",),
) -> None:
    """Add (or replace) a detector under ``name``; ``cls`` is a class or a "module:Class" string;
    ``label`` names it in tables and figures (default: ``name``); ``emits`` the statistics it
    emits ("score" and the names of its sub-scores)."""
    if level not in LEVELS:
        raise PoisonDetectError(f"unknown detector level {level!r}; expected one of {LEVELS}")
    _REGISTRY[level][name] = (cls, label or name, tuple(emits))


def unregister(level: str, name: str) -> None:
    _REGISTRY[level].pop(name, None)


def names(level: str) -> list[str]:
    """The registered detector names of one level, in registration order."""
    return list(_REGISTRY[level])


def label(level: str, name: str) -> str:
    """How tables and figures name a detector (its name when it is not registered)."""
    entry = _REGISTRY[level].get(name)
    return entry[1] if entry else name


def emits(level: str, name: str) -> tuple[str, ...]:
    """The statistics a registered detector emits: "score" (its main score) and the names of its
    sub-scores (``detector:statistic`` in tables and configs; ``base.statistic_name``)."""
    get_entry = _REGISTRY[level].get(name)
    if get_entry is None:
        get(level, name)  # the one-line error naming the known detectors
    return get_entry[2]


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


# -- the names a configuration uses, checked against the registry when the run is planned --------
# (called by config.validate_config; plain data in, one problem line per wrong name out)


def _unknown_statistic(
    key: str, name: str, emitted: dict[str, tuple[str, ...]], whose: str = "configured"
) -> str | None:
    """A problem when ``name`` (``detector`` or ``detector:statistic``) is not among what the
    ``whose`` detectors ``emitted`` (name -> the statistics it emits) emit; None when it is."""
    from poisondetect.detectors.base import parse_statistic, statistic_name  # sklearn: lazily

    detector, statistic = parse_statistic(name)
    if detector not in emitted:
        return (
            f"{key} names '{name}', but {detector} is not among the {whose} detectors "
            f"({', '.join(emitted) or 'none'})"
        )
    if statistic in emitted[detector]:
        return None
    known = ", ".join(statistic_name(detector, s) for s in emitted[detector])
    return f"{key} names '{name}', which {detector} does not emit; it emits: {known}"


def statistic_problems(ml: dict) -> list[str]:
    """Every detector statistic the model level names, checked before anything runs against what
    the detectors emit (``registry.emits``): ``calibration.verdict`` and the ``exclude`` list of a
    detector that reads the others' statistics against the configured detectors,
    ``calibration.paper_rule`` against every registered one (calibration skips it when its
    detector is not configured)."""
    configured = {d: emits("model", d) for d in ml["detectors"]}
    problems = [
        _unknown_statistic("model_level.calibration.verdict", name, configured)
        for name in ml["calibration"]["verdict"]
    ]
    registered = {d: emits("model", d) for d in names("model")}
    problems.append(
        _unknown_statistic(
            "model_level.calibration.paper_rule",
            ml["calibration"]["paper_rule"],
            registered,
            "registered",
        )
    )
    read = {d: v for d, v in configured.items() if "statistics" not in get("model", d).needs}
    for detector, block in ml["detectors"].items():
        if "statistics" in get("model", detector).needs:
            problems += [
                _unknown_statistic(
                    f"model_level.detectors.{detector}.exclude", name, read, "other configured"
                )
                for name in (block or {}).get("exclude", [])
            ]
    return [p for p in problems if p]


def figure_problems(sl: dict) -> list[str]:
    """The sample-level figures' names: detectors that are registered, sub-scores that the
    figures' detector emits (``registry.emits``) and a parameter of its config block."""
    known = names("sample")
    fig = sl["figures"]
    problems = [
        f"sample_level.figures.{key} names '{name}', which is not a sample-level detector; "
        f"known: {', '.join(known)}"
        for key, names_ in (("detector", [fig["detector"]]), ("ablation", fig["ablation"]))
        for name in names_
        if name not in known
    ]
    if fig["detector"] in known:
        subs = [s for s in emits("sample", fig["detector"]) if s != "score"]
        problems += [
            f"sample_level.figures.scatter names '{name}', which is not a sub-score of "
            f"{fig['detector']}; known: {', '.join(subs) or 'none'}"
            for name in fig["scatter"]
            if name not in subs
        ]
        params = sorted(sl.get(fig["detector"]) or {})  # its config block, defaults filled in
        if fig["sweep_param"] not in params:
            problems.append(
                f"sample_level.figures.sweep_param = '{fig['sweep_param']}' is not a parameter "
                f"of {fig['detector']}; known: {', '.join(params) or 'none'}"
            )
    return problems
