from poisondetect.logs import run_logged
from poisondetect.model_level.cell import cell_of
from poisondetect.model_level.finetunes import train_genuine

sm = snakemake  # noqa: F821
cell = cell_of(sm.wildcards)
run_logged(
    sm.log,
    train_genuine,
    sm.input.data,
    sm.output.model,
    sm.output.metrics,
    sm.output.activations,
    dataset=cell["dataset"],
    arch=cell["arch"],
    scenario=cell["scenario"],
    seed=cell["seed"],
    width=sm.params.width,
    train=sm.params.train,
    new_data_fraction=sm.params.new_data_fraction,
    trigger=sm.params.trigger,
    device=sm.params.device,
)
