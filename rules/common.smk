# Shared set-up: config validation (with defaults), the grid, path patterns and resources.
import sys

sys.path.insert(0, workflow.basedir)

from poisondetect.config import validate_config, load_schema  # noqa: E402

_validated = validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))
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
    model=r"genuine|(finetune|flip|pattern)_e\d+",


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


def ml_models():
    """Model names of one cell: genuine, honest fine-tunes and attacked fine-tunes."""
    names = ["genuine"]
    names += [f"finetune_e{e}" for e in ML["finetune"]["epochs"]]
    names += [f"{k}_e{e}" for k in ML["attacks"]["kinds"] for e in ML["attacks"]["epochs"]]
    return names


def ml_cell_files(pattern):
    """``pattern`` (relative to a cell, may contain {model}) expanded over the whole grid."""
    return [
        (ML_CELL + "/" + pattern).format(model=m, **cell)
        for cell in ml_cells()
        for m in ml_models()
    ]


def gpu_resources():
    """SLURM resources of a GPU job (profiles/slurm maps gpu to --gpus)."""
    return dict(
        gpu=GPU["gpu"],
        cpus_per_gpu=GPU["cpus_per_gpu"],
        mem_mb=GPU["mem_mb"],
        runtime=GPU["runtime"],
    )
