"""Config validation against the JSON schema (draft 2020-12), filling in defaults.

Errors name the offending key as a dotted path (``model_level.train.epochs``) and say how to fix it,
instead of jsonschema's generic message. The module imports neither torch nor Snakemake, so the
Snakefile can use it at start-up without slowing down ``snakemake -n``. The schema is package data
(``poisondetect/schemas/config.schema.yaml``): an installed package validates configs too.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from poisondetect.archives import read_npz
from poisondetect.data.formats import FORMATS
from poisondetect.errors import PoisonDetectError, short, short_repr

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
# Where the workflow caches prepared data sets (relative to its working directory): a prepared data
# set records its classes, so a class out of range is caught when the run is planned.
DATA_DIR = Path("results/data")


def _with_defaults(validator_class: type) -> type:
    """A validator class that also fills in ``default`` values of object properties."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


# A config file is a few kilobytes: anything far larger is not one (or is hostile).
MAX_CONFIG_BYTES = 1024 * 1024
# Nesting of a config's mappings and lists (the schema's deepest key is 5 levels down).
MAX_CONFIG_DEPTH = 32


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases (``*name``, whose expansion is exponential: a few hundred
    bytes become gigabytes) and with bounded nesting; anchors alone are harmless and allowed."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: D102 - yaml's hook
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                "an alias (*name), which a config may not use; write its value out",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nesting deeper than {MAX_CONFIG_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml_text(text: str) -> Any:
    """A YAML document through the loader of config files (no aliases, bounded nesting)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def read_config_file(path: str | Path, label: str | None = None) -> dict:
    """The mapping in a YAML (or JSON) config file; every way it can be unreadable is one line
    naming the file (and the line, where YAML says it), never a traceback.

    The file is read like hostile input: only a regular file (a FIFO, a device such as /dev/zero
    or a directory is refused at once), at most ``MAX_CONFIG_BYTES``, YAML without aliases and
    nested at most ``MAX_CONFIG_DEPTH`` levels, messages quoting at most a short excerpt."""
    from poisondetect.limits import read_bounded

    label = label or str(path)
    data = read_bounded(path, MAX_CONFIG_BYTES, label, "a config file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PoisonDetectError(
            f"{label}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save the file "
            "as UTF-8 (e.g. iconv -f latin1 -t utf-8 old.yaml > new.yaml)"
        ) from None
    try:
        raw = load_yaml_text(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" on line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = short(getattr(e, "problem", None) or type(e).__name__, 120)
        raise PoisonDetectError(f"{label}: not valid YAML ({problem}{at}); fix the file") from None
    except RecursionError:
        raise PoisonDetectError(
            f"{label}: nested too deeply to be a config file; fix the file"
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PoisonDetectError(
            f"{label}: the config must be a mapping of keys (e.g. 'model_level:'), not a "
            f"{type(raw).__name__}"
        )
    return raw


def check_config_file(path: str | Path) -> None:
    """For the Snakefile, before its ``configfile:`` directive: if ``path`` exists and cannot be
    read as a YAML mapping, stop Snakemake with one line naming the file (exit status 2) instead of
    Snakemake's traceback without the file name. (A ``--configfile`` given on the command line is
    read by Snakemake before the Snakefile runs: this cannot check that one; ``poisondetect run``
    does, before it starts Snakemake.)"""
    from poisondetect.errors import exit_on_user_error

    if Path(path).exists():
        with exit_on_user_error():
            read_config_file(path)


def _key(error: jsonschema.ValidationError) -> str:
    return short(".".join(str(p) for p in error.absolute_path)) or "<top level>"


# At most this many problems of a config are listed (a hostile file can hold thousands).
MAX_LISTED = 10


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "oneOf" and error.context:
        # `all` or a list / blocks: describe what is wrong inside the form the value has
        inner = [
            e for e in error.context if e.relative_path or e.validator not in ("const", "type")
        ]
        if inner:
            return _describe(jsonschema.exceptions.best_match(inner))
        forms = [b.get("const", b.get("type")) for b in error.validator_value]
        return (
            f"config key '{_key(error)}' = {short_repr(error.instance)}: expected "
            + " or ".join(f"'{f}'" if f == "all" else f"an {f}" for f in forms)
        )
    key = _key(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted((str(k) for k in set(error.instance) - set(allowed)), key=str)
        parts = []
        for name in unknown[:3]:
            where = short(f"{key}.{name}" if key != "<top level>" else name)
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            parts.append(f"unknown config key '{where}'{hint}")
        if len(unknown) > 3:
            parts.append(f"and {len(unknown) - 3:,} more unknown keys")
        return f"{'; '.join(parts)}; allowed here: {', '.join(allowed)}"
    if error.validator == "required":
        return f"config key '{key}': {short(error.message, 160)}"
    return f"config key '{key}' = {short_repr(error.instance)}: {short(error.message, 160)}"


def validate_config(config: Mapping[str, Any], schema: dict | None = None) -> dict:
    """Return a validated deep copy of ``config`` with schema defaults filled in.

    Raises PoisonDetectError listing every invalid key (dotted path, value, what was expected).
    """
    schema = with_formats(load_schema() if schema is None else schema)
    cfg = copy.deepcopy(dict(config))
    _validate(cfg, schema)
    if expand_all(cfg):  # the blocks of the detectors `all` named get their defaults
        _validate(cfg, schema)
    _check_consistency(cfg)
    return canonical(cfg)


def with_formats(schema: dict) -> dict:
    """The schema with the data formats of the table of formats (``data.formats.FORMATS``) as the
    allowed ``datasets.<name>.format`` (tests/test_names.py checks that the schema file lists
    the same)."""
    schema = copy.deepcopy(schema)
    schema["$defs"]["dataset"]["properties"]["format"]["enum"] = list(FORMATS)
    return schema


def _validate(cfg: dict, schema: dict) -> None:
    errors = sorted(
        _Validator(schema).iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path]
    )
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors[:MAX_LISTED])
        if len(errors) > MAX_LISTED:
            lines += f"\n  - and {len(errors) - MAX_LISTED:,} more"
        raise PoisonDetectError(
            f"invalid configuration:\n{lines}\n"
            "Fix these keys in your config file (or --config overrides); "
            "poisondetect/schemas/config.schema.yaml documents every key."
        )


def expand_all(cfg: dict) -> bool:
    """Replace ``detectors: all`` of either level by every registered detector of that level that
    the configuration can run (model level: a block with the defaults for each, or the block given
    beside an ``all: {}`` key; a detector that learns from shadow attacks only where there are
    some); True when something was expanded."""
    from poisondetect.detectors.registry import get, names

    expanded = False
    sl, ml = cfg.get("sample_level", {}), cfg.get("model_level", {})
    if sl.get("detectors") == "all":
        sl["detectors"], expanded = names("sample"), True
    dets = ml.get("detectors")
    if dets == "all" or (isinstance(dets, dict) and "all" in dets):
        # those the configuration can run (shadow attacks or not), with the blocks given beside
        # `all` for some of them
        shadows = ml.get("attacks", {}).get("shadow_replicates", 0)
        runnable = [n for n in names("model") if shadows or not get("model", n).uses_shadow]
        given = {k: v for k, v in dets.items() if k != "all"} if isinstance(dets, dict) else {}
        ml["detectors"], expanded = {**{name: {} for name in runnable}, **given}, True
    return expanded


def canonical(obj: Any) -> Any:
    """Dicts with keys sorted, recursively. Snakemake compares a rule's params by their text, so
    without this, reordering the keys of a config file would rerun every job."""
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    return obj


def _uses_reference(detectors: dict) -> bool:
    """Whether a configured model-level detector needs the reference honest fine-tune."""
    from poisondetect.detectors import registry

    return any(registry.get("model", d).uses_reference for d in detectors)


def _check_consistency(cfg: dict, data_dir: Path | None = DATA_DIR) -> None:
    """Cross-key checks that JSON schema cannot express."""
    problems = []
    declared = set(cfg.get("datasets", {}))
    ml = cfg.get("model_level", {})
    if ml.get("enabled", True):  # a disabled part's data sets are not read
        for name in ml.get("datasets", []):
            if name not in declared:
                problems.append(
                    f"model_level.datasets names '{name}', which is not declared under 'datasets' "
                    f"(declared: {', '.join(sorted(declared)) or 'none'})"
                )
    if ml:
        problems += _model_level_problems(ml)
    sl = cfg.get("sample_level", {})
    if sl and sl.get("enabled", True):  # a disabled part is not cross-checked
        problems += _sample_level_problems(sl, declared)
    problems += [
        f"{key} = {cls} is out of range: data set '{name}' has {n} classes (0..{n - 1}{where})"
        for name, n, where in _known_class_counts(cfg, data_dir)
        for key, cls in configured_classes(cfg, name)
        if cls >= n
    ]
    if problems:
        raise PoisonDetectError(
            "invalid configuration:\n"
            + "\n".join(f"  - {short(p, 300)}" for p in problems[:MAX_LISTED])
            + (
                f"\n  - and {len(problems) - MAX_LISTED:,} more"
                if len(problems) > MAX_LISTED
                else ""
            )
        )


def _model_level_problems(ml: dict) -> list[str]:
    """The model level's cross-key checks: populations, detectors, calibration, attacks."""
    problems = []
    variants, atk_cfg = ml["finetune"]["variants"], ml["attacks"]
    reference = ml["finetune"]["reference_variant"]
    has_sampled = ml["finetune"]["sampled"]["replicates"] not in (0, None)
    known = [*variants, *(["sampled"] if has_sampled else [])]
    if reference not in known and _uses_reference(ml["detectors"]):
        problems.append(
            f"model_level.finetune.reference_variant = '{reference}' must name one of "
            f"the honest variants ({', '.join(known)})"
        )
    if atk_cfg["shadow_replicates"] >= atk_cfg["replicates"]:
        problems.append(
            f"model_level.attacks.shadow_replicates = {atk_cfg['shadow_replicates']} leaves no "
            f"evaluated replicate of {atk_cfg['replicates']}; it must be smaller"
        )
    for reserved in ("sampled", "shadow"):
        if reserved in variants:
            problems.append(
                f"model_level.finetune.variants.{reserved}: '{reserved}' is a reserved name "
                "(the sampled null, the shadow split); give this variant another name"
            )
    sampled = ml["finetune"]["sampled"]
    for key in ("lr_factor", "epochs", "weight_decay"):
        lo, hi = sampled[key]
        if lo > hi or (key == "lr_factor" and lo <= 0) or (key == "epochs" and lo < 1):
            problems.append(
                f"model_level.finetune.sampled.{key} = {[lo, hi]} must be [low, high] with "
                f"low <= high{' and low > 0' if key == 'lr_factor' else ''}"
                f"{' and low >= 1' if key == 'epochs' else ''}"
            )
    for name, v in variants.items():
        if v["data"] == "unseen" and "new_data" not in ml["scenarios"]:
            problems.append(
                f"model_level.finetune.variants.{name}.data = unseen needs the new_data "
                "scenario (in the standard scenario M has seen every training image); add "
                "new_data to model_level.scenarios"
            )
    from poisondetect.detectors import registry

    if not atk_cfg["shadow_replicates"]:
        for name in ml["detectors"]:
            if registry.get("model", name).uses_shadow:
                problems.append(
                    f"model_level.detectors.{name} learns from shadow attacks: set "
                    "model_level.attacks.shadow_replicates >= 1 (or leave the detector out)"
                )
    from poisondetect.detectors.registry import statistic_problems

    problems += statistic_problems(ml)
    atk = ml["attacks"]
    if atk["target_class"] == atk["attacker_class"] != "random":
        problems.append(
            f"model_level.attacks.target_class and attacker_class are both "
            f"{atk['target_class']}: they must differ (the attack relabels one class as another)"
        )
    # a scalar or a list of fractions (one per attack setting): each in (0, 1]
    fractions = atk.get("fraction", [])
    for f in fractions if isinstance(fractions, list) else [fractions]:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            problems.append(
                f"model_level.attacks.fraction = {short_repr(f)} must be a number in (0, 1] (the share "
                "of the target class attacked, e.g. 0.5)"
            )
    return problems


def _sample_level_problems(sl: dict, declared: set[str]) -> list[str]:
    """The sample level's cross-key checks: tasks, rounds."""
    problems = []
    for task, spec in sl["tasks"].items():
        if task in (sl["run_tasks"] or sl["tasks"]) and spec["dataset"] not in declared:
            problems.append(
                f"sample_level.tasks.{task}.dataset = '{spec['dataset']}' is not declared "
                "under 'datasets'"
            )
    for name in sl["run_tasks"] or []:
        if name not in sl["tasks"]:
            problems.append(
                f"sample_level.run_tasks names '{name}', which is not declared under "
                f"sample_level.tasks (declared: {', '.join(sorted(sl['tasks'])) or 'none'})"
            )
    from poisondetect.detectors.registry import figure_problems

    problems += figure_problems(sl)
    r = sl["rounds"]
    if r["n_detector_rounds"] >= r["n_rounds"]:
        problems.append(
            "sample_level.rounds.n_detector_rounds must be smaller than n_rounds "
            "(the remaining rounds evaluate the detectors)"
        )
    return problems


def configured_classes(cfg: dict, dataset: str) -> list[tuple[str, int]]:
    """(config key, class index) of every class the enabled parts use on ``dataset``."""
    out = []
    ml = cfg.get("model_level", {})
    if ml.get("enabled", True) and dataset in ml.get("datasets", []):
        for key in ("target_class", "attacker_class"):
            if ml["attacks"][key] != "random":  # drawn per model among the data set's classes
                out.append((f"model_level.attacks.{key}", ml["attacks"][key]))
    sl = cfg.get("sample_level", {})
    if sl.get("enabled", True):
        for task, spec in sl.get("tasks", {}).items():
            if spec["dataset"] == dataset and task in (sl.get("run_tasks") or sl["tasks"]):
                out += [(f"sample_level.tasks.{task}.classes", c) for c in spec["classes"]]
    return out


def _known_class_counts(cfg: dict, data_dir: Path | None) -> list[tuple[str, int, str]]:
    """(data set, number of classes, where that was seen) for every data set whose classes are
    known before anything runs: a fixed-format data set, an image folder given as a directory (its
    train/ subfolders), or one already prepared under ``data_dir`` (the cache records its classes).
    Others (an image-folder archive not yet prepared) are checked by the prepare_data job."""
    known = []
    for name, spec in cfg.get("datasets", {}).items():
        fmt = FORMATS.get(spec.get("format"))
        n, where = (fmt.classes if fmt else None), ""
        prepared = Path(data_dir) / f"{name}.npz" if data_dir is not None else None
        if n is None and prepared is not None and prepared.is_file():
            try:
                classes = read_npz(prepared, ["classes"], own_cache=True)["classes"]
                n, where = len(classes), f", as prepared in {prepared}"
            except (OSError, KeyError, PoisonDetectError):
                n = None  # a broken cache is reported by the job that reads it
        if n is None and spec.get("format") == "image_folder" and spec.get("path"):
            train = Path(spec["path"]) / "train"
            if train.is_dir():
                n = sum(1 for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
                where = f", the folders of {train}"
        if n is not None:
            known.append((name, n, where))
    return known
