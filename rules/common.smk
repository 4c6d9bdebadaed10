# Shared set-up: config validation (with defaults), the grid, path patterns, wildcard constraints
# (from poisondetect.names) and resources. (The Snakefile makes the package importable.)
import os
import sys

from poisondetect import names, population  # noqa: E402
from poisondetect.attacks import registry as attack_registry  # noqa: E402
from poisondetect.config import (
    configured_classes,
    load_schema,
    validate_config,
)  # noqa: E402
from poisondetect.detectors import registry  # noqa: E402
from poisondetect.errors import PoisonDetectError, exit_on_user_error  # noqa: E402
from poisondetect.detectors.networks import (
    NETWORK_ID_PATTERN,
    network_id,
    networks,
)  # noqa: E402
from poisondetect.sample_level.filters import FILTER_FILES  # noqa: E402
from poisondetect.sample_level.networks import NETWORK_FILE  # noqa: E402

with exit_on_user_error():  # an invalid config: one line, exit status 2
    _validated = validate_config(
        config,
        load_schema(workflow.source_path("../poisondetect/schemas/config.schema.yaml")),
    )
config.clear()
config.update(_validated)
# The jobs read their inputs within the config's limits (a user's POISONDETECT_LIMITS still wins);
# an environment variable, not a rule's params: a changed limit reruns nothing.
os.environ.update(
    POISONDETECT_LIMITS=",".join(
        [f"{k}={v}" for k, v in config["limits"].items()]
        + list(filter(None, [os.environ.get("POISONDETECT_LIMITS")]))
    )
)

ML = config["model_level"]
SL = config["sample_level"]
ML_POPULATIONS = population.describe_populations(ML)  # the captions' prose
GPU = config["resources"]["gpu_jobs"]
# the verdict's calibration: too few honest fitting replicates for the configured rate is said
# before any job runs (and again, with the rate reached, in every cell's calibrate log)
_CALIBRATION_WARNING = ML["enabled"] and population.calibration_warning(ML)
if _CALIBRATION_WARNING:
    print(f"warning: {_CALIBRATION_WARNING}", file=sys.stderr)

# One directory per model-level grid cell.
ML_CELL = "results/model_level/{dataset}/{arch}/{scenario}/seed{seed}"
# One directory per sample-level cell.
SL_CELL = "results/sample_level/{task}/{attack}/p{n_poison}/seed{seed}"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    arch=names.regex(names.ARCHS),
    scenario=names.regex(names.SCENARIOS),
    seed=r"\d+",
    model=population.MODEL_PATTERN,
    honest=population.HONEST_PATTERN,
    attack_population=population.ATTACK_PATTERN,
    detector=r"[a-z][a-z0-9_]*",
    attack=names.regex(names.SAMPLE_ATTACKS),
    n_poison=r"\d+",
    train_on=names.regex(names.TRAIN_ON),
    network=NETWORK_ID_PATTERN,


# -- model level ----------------------------------------------------------------------------------
def ml_path(rel, root="results"):
    """Path of a model-level cell's file (a pattern with the cell's wildcards); root = results,
    logs or results/benchmarks."""
    return f"{root}/{ML_CELL.removeprefix('results/')}/{rel}"


def ml_cell_dir(w):
    """The directory of a job's model-level cell."""
    return ML_CELL.format(**{k: w[k] for k in ("dataset", "arch", "scenario", "seed")})


def dataset_spec(name):
    return config["datasets"][name]


def ml_cells():
    """Every (dataset, arch, scenario, seed) cell of the model-level grid."""
    if not ML["enabled"]:
        return []
    return [
        dict(dataset=d, arch=a, scenario=s, seed=seed)
        for d in ML["datasets"]
        for a in ML["archs"]
        for s in ML["scenarios"]
        for seed in ML["seeds"]
    ]


def ml_model_files(kind):
    """Input function: the ``kind`` file (population.MODEL_FILES) of every model of the cell."""

    def files(w):
        return [
            ml_path(population.MODEL_FILES[kind]).format(model=m, **dict(w.items()))
            for m in population.cell_models(ML, w.scenario)
        ]

    return files


def ml_cell_files(rel):
    """``rel`` (relative to a cell) expanded over the whole grid."""
    return [ml_path(rel).format(**cell) for cell in ml_cells()]


def ml_n_fit():
    """How many replicates of each honest variant fit and calibrate (variant -> count)."""
    return population.fit_counts(ML)


def ml_job_models(w):
    """The models one fine-tune job makes: its {model}, or every replicate of its population."""
    keys = list(w.keys())
    if "model" in keys:
        return [w.model]
    if "honest" in keys:
        variant = w.honest.removeprefix("honest_")
        return [
            f"{w.honest}_r{r}" for r in range(population.honest_replicates(ML, variant))
        ]
    return [f"{w.attack_population}_r{r}" for r in range(ML["attacks"]["replicates"])]


def ml_finetune_settings(w):
    """The settings one fine-tune job uses (only those, so changing another variant reruns
    nothing here): the honest variant's, or the attack's (of the kinds' settings only its own:
    ``poisondetect.attacks.registry``)."""
    spec = population.parse_model(ml_job_models(w)[0])
    if spec.role == "honest" and spec.variant == population.SAMPLED:
        return {"honest": ML["finetune"]["sampled"], "attack": None}
    if spec.role == "honest":
        return {"honest": ML["finetune"]["variants"][spec.variant], "attack": None}
    atk = {
        k: v
        for k, v in attack_registry.job_settings(spec.attack, ML["attacks"]).items()
        if k not in ("kinds", "epochs", "fraction", "replicates", "sampled")
    }
    # attacks.sampled: the attacker draws its recipe as the sampled honest null does
    if ML["attacks"]["sampled"]:
        atk["recipe"] = ML["finetune"]["sampled"]
    shadows = ML["attacks"]["shadow_replicates"]
    if any(population.parse_model(m).replicate < shadows for m in ml_job_models(w)):
        # a shadow attack's pair avoids the evaluated attacks' pairs
        atk["evaluated"] = population.evaluated_attacks(ML)
    return {"honest": None, "attack": atk}


def finetune_outputs(population_name, replicates):
    """The outputs of a population job: every replicate of ``population_name`` (a pattern)."""
    return {
        key: expand(
            ml_path(rel.replace("{model}", f"{population_name}_r{{rep}}")),
            rep=range(replicates),
            allow_missing=True,
        )
        for key, rel in population.MODEL_FILES.items()
    }


def ml_detector(name):
    return registry.get("model", name)


def ml_detector_inputs(w):
    """What one detector reads: every model's dump; checkpoints and AE errors where it needs them."""
    needs = ml_detector(w.detector).needs
    inputs = {"activations": ml_model_files("activations")(w)}
    if "weights" in needs or "network" in needs:
        inputs["checkpoints"] = ml_model_files("model")(w)
    if "images" in needs:
        inputs["data"] = f"results/data/{w.dataset}.npz"
    if "errors" in needs:
        inputs["errors"] = ml_path("scores/ae_errors.parquet").format(**dict(w.items()))
    if "statistics" in needs:  # the statistics of every detector that reads none itself
        inputs["statistics"] = [
            ml_path("scores/{detector}.csv").format(
                **{**dict(w.items()), "detector": d}
            )
            for d in ML["detectors"]
            if "statistics" not in ml_detector(d).needs
        ]
    return inputs


def ml_detector_trigger(w):
    """The trigger set's settings, for the detectors that read the trigger images (else None)."""
    return ML["trigger_set"] if "images" in ml_detector(w.detector).needs else None


def ml_detector_device(w):
    """The configured device, for the detectors that run a network (else None: a CPU job)."""
    return config["device"] if "network" in ml_detector(w.detector).needs else None


def ml_detector_resource(key):
    """A GPU job's resource for the detectors that run a network; CPU jobs ask for no GPU."""
    return lambda w: (
        gpu_resources()[key]
        if "network" in ml_detector(w.detector).needs
        else {"gpu": 0}.get(key, gpu_resources()[key])
    )


def ml_reference(w):
    """The reference honest fine-tune's name, for the detectors that use one (else None)."""
    if not ml_detector(w.detector).uses_reference:
        return None
    return population.honest_name(ML["finetune"]["reference_variant"], 0)


def ml_group_cells():
    """The (dataset, arch, scenario) combinations of the grid (figures pool the seeds)."""
    return sorted({(c["dataset"], c["arch"], c["scenario"]) for c in ml_cells()})


def gpu_resources():
    """SLURM resources of a GPU job (profiles/slurm maps gpu to --gpus)."""
    return dict(
        gpu=GPU["gpu"],
        cpus_per_gpu=GPU["cpus_per_gpu"],
        mem_mb=GPU["mem_mb"],
        runtime=GPU["runtime"],
    )


# -- sample level ---------------------------------------------------------------------------------
SL_DETECTORS = [d for d in registry.names("sample") if d in SL["detectors"]]
SL_FIG = SL["figures"]  # its names are checked with the config (config.figure_problems)


def sl_path(rel, root="results"):
    """A file of a sample-level cell (a pattern with task, attack, poisons, seed); root = results,
    logs or results/benchmarks."""
    return f"{root}/{SL_CELL.removeprefix('results/')}/{rel}"


def sl_cell_dir(w):
    return SL_CELL.format(**{k: w[k] for k in ("task", "attack", "n_poison", "seed")})


def sl_filter_files(key, detectors):
    """The ``key`` file (FILTER_FILES) of each of ``detectors`` in a cell (train_on a wildcard)."""
    return expand(sl_path(FILTER_FILES[key]), detector=detectors, allow_missing=True)


def sl_detector_networks(task, seed, detector):
    """The networks one detector of a task and seed is made of: id -> (kind, settings)."""
    extra = dict(
        SL["autoencoders"], arch=sl_task(task)["detector_arch"], seed=int(seed)
    )
    specs = networks(detector, SL[detector], **extra).values()
    return {network_id(kind, settings): (kind, settings) for kind, settings in specs}


def sl_filter_inputs(w):
    """A detector's fit job reads the cell's poisoned rounds and its networks' files."""
    nets = sl_detector_networks(w.task, w.seed, w.detector)
    return {
        "poisoned": sl_path("poisoned.npz").format(**dict(w.items())),
        "networks": [
            sl_path(NETWORK_FILE).format(**{**dict(w.items()), "network": n})
            for n in nets
        ],
    }


def sl_network(w):
    """The (kind, settings) of a fit_network job's network."""
    for d in SL_DETECTORS:
        found = sl_detector_networks(w.task, w.seed, d).get(w.network)
        if found:
            return found
    raise PoisonDetectError(
        f"no configured detector is made of the network {w.network}"
    )


def sl_task_path(rel, root="results"):
    """A file of a sample-level task and seed (root as for sl_path)."""
    return f"{root}/sample_level/{{task}}/seed{{seed}}/{rel}"


def sl_task(name):
    return SL["tasks"][name]


def sl_run_tasks():
    """The tasks to run: sample_level.run_tasks, or every declared task."""
    return SL["run_tasks"] if SL["run_tasks"] is not None else list(SL["tasks"])


def sl_cells():
    if not SL["enabled"]:
        return []
    return [
        dict(task=t, attack=a, n_poison=p, seed=s)
        for t in sl_run_tasks()
        for a in SL["attacks"]
        for p in SL["n_poison"]
        for s in SL["seeds"]
    ]


def sl_svm_params(task):
    """scikit-learn SVC keyword arguments of a task (gamma only for the RBF kernel)."""
    t = sl_task(task)
    gamma = {"gamma": t["gamma"]} if t["kernel"] == "rbf" else {}
    return {"kernel": t["kernel"], "C": t["C"], **gamma}


def sl_summaries():
    return [
        sl_path(FILTER_FILES["summary"]).format(detector=d, train_on=t, **c)
        for c in sl_cells()
        for d in SL_DETECTORS
        for t in SL["train_on"]
    ]


def sl_fig(name):
    """A figure of a sample-level task (pattern with {task})."""
    return f"results/sample_level/figures/{{task}}_{name}"


def sl_analysis(name):
    """A tidy analysis table of a sample-level task (pattern with {task})."""
    return f"results/sample_level/analysis/{{task}}_{name}.csv"


def sl_figure_scores(w):
    """The per-point scores of the figures' detector at the largest poison count, first seed,
    trained on contaminated data, for every attack of the task."""
    cell = dict(task=w.task, n_poison=max(SL["n_poison"]), seed=SL["seeds"][0])
    rel = FILTER_FILES["scores"].format(
        detector=SL_FIG["detector"], train_on="contaminated"
    )
    return {a: sl_path(rel).format(attack=a, **cell) for a in SL["attacks"]}


def sample_level_targets():
    if not SL["enabled"] or not sl_cells():
        return []
    targets = ["results/sample_level/filtering.csv"]
    for task in sl_run_tasks():
        targets += [
            f"results/sample_level/{task}_f1.tex",
            f"results/sample_level/{task}_accuracy.tex",
        ]
        figs = [6]
        if SL_FIG["detector"] in SL_DETECTORS and "contaminated" in SL["train_on"]:
            figs += [2, 3, 4, 5]
        if "clean" in SL["train_on"] and "contaminated" in SL["train_on"]:
            figs.append(7)
        targets += [sl_fig(f"fig{i}.png").format(task=task) for i in sorted(figs)]
    return targets


def all_targets():
    targets = []
    if ML["enabled"] and ml_cells():
        targets += rules.model_level_tables.output
        targets += [
            "results/model_level/figures/fig5_{dataset}_{arch}_{scenario}_seed{seed}.png".format(
                **c
            )
            for c in ml_cells()
        ]
        targets += [
            f"results/model_level/figures/{name}_{d}_{a}_{s}.png"
            for d, a, s in ml_group_cells()
            for name in ("roc", "auroc", "success")
        ]
    targets += sample_level_targets()
    return targets
