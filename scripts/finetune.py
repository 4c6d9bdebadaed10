from _common import cell_of, run_logged

from poisondetect.model_level import finetune

sm = snakemake  # noqa: F821
cell = cell_of(sm.wildcards)
run_logged(
    sm.log,
    finetune,
    sm.input.data,
    sm.input.genuine,
    sm.output.model,
    sm.output.metrics,
    dataset=cell["dataset"],
    variant=sm.wildcards.get("attack", "finetune"),
    epochs=int(sm.wildcards.epochs),
    train=sm.params.train,
    lr_factor=sm.params.lr_factor,
    attack=sm.params.get("attack"),
    seed=cell["seed"],
    device=sm.params.device,
)
