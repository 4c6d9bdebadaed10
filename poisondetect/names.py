"""Every list of names the workflow knows, in one place.

The Snakemake rules build their wildcard constraints from these lists (``regex``), the command
line takes its choices from them, the report its labels, and ``tests/test_names.py`` checks that
the config schema's enums, the model registry, the data readers and the attacks agree with them.
Adding an architecture starts here; model-level attack kinds come from
``poisondetect.attacks.registry``, data formats from ``poisondetect.data.formats`` (the table of
formats). Detector names live in ``poisondetect.detectors.registry`` (the registry is their
list). Nothing heavy is imported: the
workflow plans with this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from poisondetect.attacks import registry as _attack_registry
from poisondetect.data.formats import FORMATS

# -- data -----------------------------------------------------------------------------------------
DATA_FORMATS = tuple(FORMATS)  # the table of formats (poisondetect/data/formats.py) is their list

# -- model level ----------------------------------------------------------------------------------
ARCHS = ("cnn", "resnet18", "resnet152", "wrn28_10", "vgg16", "vgg19")
SCENARIOS = ("standard", "new_data")
HONEST_DATA = ("all", "seen", "unseen")  # what an honest fine-tune trains on
# model-level attack kind -> its label in tables (the paper's FA = flipping, PAA = pattern
# addition; the others' from the literature): the kinds of the attack registry, in its order
MODEL_ATTACKS = _attack_registry.labels()
MODEL_JOB_MODES = ("per_model", "per_population")

# -- sample level ---------------------------------------------------------------------------------
SAMPLE_ATTACKS = ("flip", "optimal", "semi_optimal", "mixed")
SAMPLE_DETECTOR_ARCHS = ("conv", "conv_nopool", "dense")  # the task's detector_arch
TRAIN_ON = ("contaminated", "clean")  # what the sample-level detectors are fitted on
SAMPLE_JOB_MODES = ("per_detector", "per_cell")
# the kinds of network the sample-level auto-encoder detectors are made of (detectors/networks.py)
NETWORK_KINDS = ("rae", "cae")
# a sample-level decision: the detector's own (its predict) or top-K, K = the round's poisons
DECISIONS = ("own", "topk")


def regex(names: Iterable[str]) -> str:
    """A regular expression matching exactly one of ``names`` (a Snakemake wildcard constraint)."""
    return "|".join(re.escape(n) for n in names)


def attack_label(kind: str) -> str:
    """The label of a model-level attack kind: flip -> FA, pattern -> PAA (a kind registered
    after this module was imported: its registry label)."""
    return MODEL_ATTACKS.get(kind) or _attack_registry.labels().get(kind, kind)
