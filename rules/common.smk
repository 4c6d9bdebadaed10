# Shared set-up: config validation (with defaults), the grid, path patterns and resources.
import sys

sys.path.insert(0, workflow.basedir)

from poisondetect.config import validate_config, load_schema  # noqa: E402
from poisondetect.errors import exit_on_user_error  # noqa: E402
from poisondetect import population  # noqa: E402

with exit_on_user_error():  # an invalid config: one line, exit status 2
    _validated = validate_config(
        config,
        load_schema(workflow.source_path("../poisondetect/schemas/config.schema.yaml")),
    )
config.clear()
config.update(_validated)

ML = config["model_level"]
SL = config["sample_level"]
GPU = config["resources"]["gpu_jobs"]

# One directory per model-level grid cell.
ML_CELL = "results/model_level/{dataset}/{arch}/{scenario}/seed{seed}"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    arch=r"cnn|resnet18|resnet152|wrn28_10|vgg16|vgg19",
    scenario=r"standard|new_data",
    seed=r"\d+",
    epochs=r"\d+",
    model=population.MODEL_PATTERN,
    detector=r"[a-z][a-z0-9_]*",


def ml_path(rel, root="results"):
    """Path of a model-level cell's file (a pattern with the cell's wildcards); root = results,
    logs or results/benchmarks."""
    return f"{root}/{ML_CELL.removeprefix('results/')}/{rel}"


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


def ml_models(scenario):
    """Model names of a cell: genuine, the honest and the attacked populations."""
    return population.cell_models(ML, scenario)


def ml_model_files(pattern):
    """Input function: ``pattern`` (relative to a cell, with {model}) for every model of the cell
    (the scripts key them by file name: the model's name)."""

    def files(w):
        return [
            ml_path(pattern).format(model=m, **dict(w.items()))
            for m in ml_models(w.scenario)
        ]

    return files


def ml_cell_files(pattern):
    """``pattern`` (relative to a cell) expanded over the whole grid."""
    return [ml_path(pattern).format(**cell) for cell in ml_cells()]


def ml_n_fit():
    return population.n_fit(
        ML["finetune"]["replicates"], ML["calibration"]["fit_share"]
    )


def ml_finetune_model(w):
    """The (first) model of a fine-tune job: its {model}, or replicate 0 of its population."""
    keys = list(w.keys())
    if "model" in keys:
        return w.model
    return f"honest_{w.variant}_r0" if "variant" in keys else f"{w.attack}_r0"


def ml_finetune_settings(w):
    """The settings one fine-tune job uses (only those, so changing another variant reruns
    nothing here): the honest variant's, or the attack's (pattern keys only for the pattern
    attack)."""
    spec = population.parse_model(ml_finetune_model(w))
    if spec.role == "honest":
        return {"honest": ML["finetune"]["variants"][spec.variant], "attack": None}
    atk = {
        k: v
        for k, v in ML["attacks"].items()
        if k not in ("kinds", "epochs", "fraction", "replicates")
        and (spec.variant == "pattern" or not k.startswith("pattern_"))
    }
    return {"honest": None, "attack": atk}


FINETUNE_OUTPUTS = {
    "models": "models/{model}.safetensors",
    "metrics": "eval/{model}.json",
    "activations": "activations/{model}.parquet",
}


def finetune_outputs(name, replicates):
    """The outputs of a population job: every replicate of the population ``name`` (a pattern)."""
    return {
        key: expand(
            ml_path(rel.replace("{model}", f"{name}_r{{rep}}")),
            rep=range(replicates),
            allow_missing=True,
        )
        for key, rel in FINETUNE_OUTPUTS.items()
    }


def ml_detector_inputs(w):
    """What one detector reads: every model's dump; checkpoints and AE errors where it needs them."""
    from poisondetect.detectors import registry

    needs = registry.get("model", w.detector).needs
    inputs = {"activations": ml_model_files("activations/{model}.parquet")(w)}
    if "weights" in needs:
        inputs["checkpoints"] = ml_model_files("models/{model}.safetensors")(w)
    if "errors" in needs:
        inputs["errors"] = ml_path("scores/ae_errors.parquet").format(**dict(w.items()))
    return inputs


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


# -- sample level and report helpers ----------------------------------------------------------
# Planning imports no stage module: only the registry's names (plain strings, no torch).

from poisondetect.detectors.registry import names as _detector_names  # noqa: E402
from poisondetect.errors import PoisonDetectError  # noqa: E402

SL_DETECTORS = [d for d in _detector_names("sample") if d in SL["detectors"]]
SL_FIG = SL["figures"]
_unknown = sorted(
    {SL_FIG["detector"], *SL_FIG["ablation"]} - set(_detector_names("sample"))
)
if _unknown:
    raise PoisonDetectError(
        f"sample_level.figures names unregistered detector(s) {_unknown}; "
        f"use names of sample_level.detectors' enum ({', '.join(_detector_names('sample'))})"
    )


def sl_path(rel, root="results"):
    """A file of a sample-level cell (a pattern with task, attack, poisons, seed); root = results,
    logs or results/benchmarks."""
    return f"{root}/sample_level/{{task}}/{{attack}}/p{{n_poison}}/seed{{seed}}/{rel}"


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
        sl_path("filter/{detector}_{train_on}.json").format(detector=d, train_on=t, **c)
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
    n = max(SL["n_poison"])
    seed = SL["seeds"][0]
    d = SL_FIG["detector"]
    return {
        a: f"results/sample_level/{w.task}/{a}/p{n}/seed{seed}/filter/{d}_contaminated.parquet"
        for a in SL["attacks"]
    }


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
            for name in ("roc", "auroc")
        ]
    targets += sample_level_targets()
    return targets
