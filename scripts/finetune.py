from poisondetect.logs import run_logged
from poisondetect.model_level.cell import cell_of
from poisondetect.model_level.finetunes import finetune

sm = snakemake  # noqa: F821
cell = cell_of(sm.wildcards)
run_logged(
    sm.log,
    finetune,
    sm.input.data,
    sm.input.genuine,
    sm.params.cell_dir,
    sm.params.models,
    train=sm.params.train,
    honest=sm.params.settings["honest"],
    attack=sm.params.settings["attack"],
    scenario=cell["scenario"],
    new_data_fraction=sm.params.new_data_fraction,
    trigger=sm.params.trigger,
    seed=cell["seed"],
    device=sm.params.device,
)
