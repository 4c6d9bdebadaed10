from _common import cell_of, run_logged

from poisondetect.model_level import dump

sm = snakemake  # noqa: F821
cell = cell_of(sm.wildcards)
run_logged(
    sm.log,
    dump,
    sm.input.data,
    sm.input.model,
    sm.output[0],
    max_samples=sm.params.trigger["max_samples"],
    batch_size=sm.params.trigger["batch_size"],
    seed=cell["seed"],
    device=sm.params.device,
    metadata={**cell, "model": sm.wildcards.model},
)
