import pytest
import yaml
from conftest import REPO

from poisondetect.config import SCHEMA_PATH, validate_config
from poisondetect.detectors.registry import names as registry_names
from poisondetect.errors import PoisonDetectError


def test_defaults_are_filled_in():
    cfg = validate_config({})
    assert cfg["device"] == "auto"
    assert cfg["datasets"] == {
        "digits": {
            "format": "digits",
            "path": None,
            "label": None,
            "channels": None,
            "image_size": None,
            "max_train": None,
            "max_test": None,
            "test_fraction": 0.25,
        }
    }
    ml = cfg["model_level"]
    assert ml["attacks"]["fraction"] == [0.5]
    assert ml["attacks"]["pattern_size"] == 5
    assert ml["finetune"]["variants"]["paper"]["lr_factor"] == 0.1
    assert cfg["resources"]["gpu_jobs"]["gpu"] == 1
    assert cfg["sample_level"]["cae_plus"]["alpha"] == 0.66
    assert cfg["sample_level"]["magnet_reformer"]["epochs"] == 300  # every detector has its block
    assert cfg["sample_level"]["activation_clustering"] == {"n_components": 10, "max_size": 0.35}


def test_shipped_config_is_valid():
    with open(REPO / "config.yaml") as f:
        cfg = validate_config(yaml.safe_load(f))
    assert cfg["model_level"]["datasets"] == ["digits"]


def test_wrong_type_names_the_key():
    with pytest.raises(PoisonDetectError) as e:
        validate_config({"model_level": {"train": {"epochs": "ten"}}})
    assert "model_level.train.epochs" in str(e.value)
    assert "'ten'" in str(e.value)


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(PoisonDetectError) as e:
        validate_config({"model_level": {"train": {"epoch": 3}}})
    msg = str(e.value)
    assert "model_level.train.epoch" in msg
    assert "did you mean 'epochs'" in msg


def test_every_bad_key_is_listed():
    with pytest.raises(PoisonDetectError) as e:
        validate_config({"device": "tpu", "model_level": {"archs": ["resnet9"]}})
    msg = str(e.value)
    assert "'device'" in msg and "model_level.archs.0" in msg


def test_population_cross_checks():
    with pytest.raises(PoisonDetectError, match="reference_variant = 'other'"):
        validate_config({"model_level": {"finetune": {"reference_variant": "other"}}})
    # no detector that needs a reference: any reference is fine
    validate_config(
        {
            "model_level": {
                "finetune": {"reference_variant": "other"},
                "detectors": {"ae_class": {}},
                "calibration": {"verdict": ["ae_class"]},
            }
        }
    )
    with pytest.raises(PoisonDetectError, match="data = unseen needs the new_data"):
        validate_config(
            {"model_level": {"finetune": {"variants": {"paper": {}, "u": {"data": "unseen"}}}}}
        )
    with pytest.raises(PoisonDetectError, match="verdict names 'mahalanobis'"):
        validate_config(
            {
                "model_level": {
                    "detectors": {"ae_mean": {}},
                    "calibration": {"verdict": ["mahalanobis"]},
                }
            }
        )
    with pytest.raises(PoisonDetectError, match="unknown config key 'model_level.detectors.magic'"):
        validate_config({"model_level": {"detectors": {"magic": {}}}})


def test_undeclared_dataset_is_refused():
    with pytest.raises(PoisonDetectError, match="'cifar', which is not declared"):
        validate_config({"model_level": {"datasets": ["cifar"]}})


def test_target_and_attacker_class_must_differ():
    with pytest.raises(PoisonDetectError, match="target_class and attacker_class"):
        validate_config({"model_level": {"attacks": {"target_class": 3, "attacker_class": 3}}})


def test_key_order_does_not_matter():
    a = validate_config(
        {"datasets": {"digits": {"format": "digits", "max_train": 5, "max_test": 3}}}
    )
    b = validate_config(
        {"datasets": {"digits": {"max_test": 3, "format": "digits", "max_train": 5}}}
    )
    assert repr(a) == repr(b)  # Snakemake compares params by their text


def test_a_disabled_part_is_not_cross_checked():
    cfg = {
        "datasets": {"m": {"format": "mnist", "path": "/data/mnist"}},
        "model_level": {"datasets": ["m"]},
        "sample_level": {"enabled": False},
    }
    validate_config(cfg)  # the default digits task of the disabled part is not checked
    with pytest.raises(PoisonDetectError, match="digits_1v7.dataset = 'digits'"):
        validate_config({**cfg, "sample_level": {"enabled": True}})


def test_schema_is_package_data_and_the_only_copy():
    """An installed package validates configs too (the filter command): the schema lives inside
    the package, and the workflow reads that same file."""
    import poisondetect

    assert SCHEMA_PATH.is_file()
    assert SCHEMA_PATH.parent.parent == REPO / "poisondetect" == REPO / poisondetect.__name__
    assert not (REPO / "schemas").exists()
    assert "poisondetect/schemas/config.schema.yaml" in (REPO / "rules/common.smk").read_text()


def test_all_detectors_with_some_blocks():
    """`all: {}` beside a few blocks runs every registered detector (those that learn from shadow
    attacks where there are shadows), the named ones with their settings."""
    from poisondetect.detectors import registry

    ml = validate_config(
        {"model_level": {"detectors": {"all": {}, "ae_class": {"min_spread": 0.5}}}}
    )["model_level"]
    plain = [n for n in registry.names("model") if not registry.get("model", n).uses_shadow]
    assert sorted(ml["detectors"]) == sorted(plain)
    assert ml["detectors"]["ae_class"]["min_spread"] == 0.5
    shadows = validate_config(
        {"model_level": {"detectors": "all", "attacks": {"replicates": 3, "shadow_replicates": 1}}}
    )["model_level"]
    assert sorted(shadows["detectors"]) == sorted(registry.names("model"))
    with pytest.raises(PoisonDetectError, match="shadow_replicates >= 1"):
        validate_config({"model_level": {"detectors": {"combined": {}}}})


def _one_problem(config: dict) -> str:
    """The message of the one problem ``config`` has (validation must refuse it)."""
    with pytest.raises(PoisonDetectError) as e:
        validate_config(config)
    lines = [ln for ln in str(e.value).splitlines() if ln.startswith("  - ")]
    assert len(lines) == 1, str(e.value)
    return lines[0]


def test_a_misspelt_verdict_statistic_is_named_with_the_known_ones():
    from poisondetect.detectors import registry

    msg = _one_problem({"model_level": {"calibration": {"verdict": ["prediction_flow:larges"]}}})
    assert "model_level.calibration.verdict names 'prediction_flow:larges'" in msg
    # the known names: every statistic each configured detector declares it emits
    for stat in registry.emits("model", "prediction_flow"):
        assert ("prediction_flow" if stat == "score" else f"prediction_flow:{stat}") in msg
    # what the detector does emit passes
    validate_config({"model_level": {"calibration": {"verdict": ["prediction_flow:largest"]}}})


def test_statistics_named_anywhere_in_the_model_level_are_checked():
    shadows = {"replicates": 3, "shadow_replicates": 1}
    msg = _one_problem(
        {
            "model_level": {
                "attacks": shadows,
                "detectors": {"ae_mean": {}, "combined": {"exclude": ["ae_mean:paper_margn"]}},
                "calibration": {"verdict": ["combined"]},
            }
        }
    )
    assert "model_level.detectors.combined.exclude names 'ae_mean:paper_margn'" in msg
    assert "ae_mean:paper_margin" in msg
    # the combined detector reads the others' statistics, never its own
    msg = _one_problem(
        {
            "model_level": {
                "attacks": shadows,
                "detectors": {"ae_mean": {}, "combined": {"exclude": ["combined"]}},
                "calibration": {"verdict": ["combined"]},
            }
        }
    )
    assert "exclude names 'combined'" in msg
    msg = _one_problem({"model_level": {"calibration": {"paper_rule": "ae_mean:margin"}}})
    assert "model_level.calibration.paper_rule names 'ae_mean:margin'" in msg


def test_sample_level_figure_names_are_checked():
    msg = _one_problem({"sample_level": {"figures": {"scatter": ["re", "cee"]}}})
    assert "sample_level.figures.scatter names 'cee'" in msg and "re, ce" in msg
    msg = _one_problem({"sample_level": {"figures": {"ablation": ["rae", "cea"]}}})
    assert "sample_level.figures.ablation names 'cea'" in msg and "cae_plus" in msg
    msg = _one_problem({"sample_level": {"figures": {"sweep_param": "alpa"}}})
    assert "sample_level.figures.sweep_param = 'alpa'" in msg and "alpha" in msg


def _schema_defaults(block: dict, schema: dict) -> dict:
    """``key -> default`` of the properties of a schema block (YAML anchors merged, $refs
    followed to their definitions' defaults)."""
    out = {}
    for key, node in block.get("properties", {}).items():
        if "$ref" in node and "default" not in node:
            node = schema["$defs"][node["$ref"].split("/")[-1]]
        if "default" in node:
            out[key] = node["default"]
    return out


def _plain(value):
    """Tuples as lists (YAML has no tuples), recursively."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize(
    "level, name", [(lvl, n) for lvl in ("sample", "model") for n in registry_names(lvl)]
)
def test_schema_defaults_equal_the_detector_classes_defaults(level, name):
    """Each default lives in the class (its constructor, e.g. ``detectors.networks.DEFAULTS``);
    the schema repeats it to fill configs in, and must say the same. Settings a sample-level
    detector shares with the others come from the ``autoencoders`` block."""
    import inspect

    from poisondetect.config import load_schema
    from poisondetect.detectors import registry

    schema = load_schema()
    if level == "sample":
        sl = schema["properties"]["sample_level"]["properties"]
        blocks = [sl[name], sl["autoencoders"]]
    else:
        dets = schema["properties"]["model_level"]["properties"]["detectors"]
        obj = next(b for b in dets["oneOf"] if b.get("type") == "object")
        blocks = [obj["properties"][name]]
    in_schema = {}
    for block in reversed(blocks):  # the detector's own block wins
        in_schema.update(_schema_defaults(block, schema))
    params = inspect.signature(registry.get(level, name).__init__).parameters
    in_class = {k: p.default for k, p in params.items() if k != "self"}
    shared = set(in_schema) & set(in_class)
    own = set(_schema_defaults(blocks[0], schema))
    assert own <= set(in_class), f"schema keys the class does not take: {own - set(in_class)}"
    assert {k: _plain(in_schema[k]) for k in shared} == {k: _plain(in_class[k]) for k in shared}
