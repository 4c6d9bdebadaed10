"""One source for every list of names (poisondetect.names, the detector registry): the config
schema's enums, the model registry, the data readers, the attacks and the command line agree
with it, so adding a name in one place and forgetting another fails here."""

from __future__ import annotations

import re

import pytest

from poisondetect import names, population
from poisondetect.config import load_schema
from poisondetect.detectors import registry

SCHEMA = load_schema()
ML = SCHEMA["properties"]["model_level"]["properties"]
SL = SCHEMA["properties"]["sample_level"]["properties"]


def _enum(node) -> list:
    return node.get("enum") or node["items"]["enum"]


def _branch(node, form: str) -> dict:
    return next(b for b in node["oneOf"] if b.get("type") == form)


@pytest.mark.parametrize(
    "node, expected",
    [
        (SCHEMA["$defs"]["dataset"]["properties"]["format"], names.DATA_FORMATS),
        (ML["archs"], names.ARCHS),
        (ML["scenarios"], names.SCENARIOS),
        (ML["jobs"], names.MODEL_JOB_MODES),
        (ML["attacks"]["properties"]["kinds"], tuple(names.MODEL_ATTACKS)),
        (SCHEMA["$defs"]["honest_variant"]["properties"]["data"], names.HONEST_DATA),
        (SL["attacks"], names.SAMPLE_ATTACKS),
        (SL["train_on"], names.TRAIN_ON),
        (SL["jobs"], names.SAMPLE_JOB_MODES),
        (
            SL["tasks"]["additionalProperties"]["properties"]["detector_arch"],
            names.SAMPLE_DETECTOR_ARCHS,
        ),
    ],
)
def test_schema_enums_equal_the_names(node, expected):
    assert _enum(node) == list(expected)


def test_schema_detectors_equal_the_registry():
    assert _enum(_branch(SL["detectors"], "array")) == registry.names("sample")
    blocks = list(_branch(ML["detectors"], "object")["properties"])
    assert blocks == ["all", *registry.names("model")]  # `all: {}` beside some blocks
    # every sample-level detector has its config block
    assert set(registry.names("sample")) <= set(SL)


def test_code_registries_equal_the_names():
    from poisondetect.attacks.svm import KINDS
    from poisondetect.data import FORMATS
    from poisondetect.detectors.nets import ARCHITECTURES
    from poisondetect.models import ARCHITECTURES as MODEL_ARCHS

    assert tuple(MODEL_ARCHS) == names.ARCHS
    assert tuple(FORMATS) == names.DATA_FORMATS
    assert all(callable(spec.read_function()) for spec in FORMATS.values())  # every reader exists
    assert tuple(KINDS) == names.SAMPLE_ATTACKS
    assert set(names.SAMPLE_DETECTOR_ARCHS) <= set(ARCHITECTURES)


def test_wildcard_patterns_come_from_the_names():
    for kind in names.MODEL_ATTACKS:
        assert re.fullmatch(population.MODEL_PATTERN, f"{kind}_f50_e10_r0")
    assert not re.fullmatch(population.MODEL_PATTERN, "other_f50_e10_r0")
    assert re.fullmatch(names.regex(names.ARCHS), "resnet18")
    assert not re.fullmatch(names.regex(names.ARCHS), "resnet1")


def test_population_labels():
    assert population.population_label(population.parse_model("flip_f50_e10_r2")) == "FA 50% e10"
    assert population.population_label(population.parse_model("pattern_f5_e5_r0")) == "PAA 5% e5"
    assert population.population_label(population.parse_model("honest_lr3x_r1")) == "Honest lr3x"
    assert population.population_label(population.parse_model("genuine")) == "Genuine"


def test_filter_command_choices_come_from_the_names():
    from poisondetect.__main__ import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command").choices["filter"]
    arch = next(a for a in sub._actions if a.dest == "arch")
    assert tuple(arch.choices) == names.SAMPLE_DETECTOR_ARCHS
