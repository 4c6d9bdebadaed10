from pathlib import Path

from _common import cell_of, run_logged

from poisondetect.model_level import finetune

sm = snakemake  # noqa: F821
cell = cell_of(sm.wildcards)


def files(key):
    value = sm.output[key]
    return [value] if isinstance(value, str) else list(value)


outputs = {
    Path(m).stem: {"model": m, "metrics": e, "activations": a}
    for m, e, a in zip(files("models"), files("metrics"), files("activations"), strict=True)
}
run_logged(
    sm.log,
    finetune,
    sm.input.data,
    sm.input.genuine,
    outputs,
    train=sm.params.train,
    honest=sm.params.settings["honest"],
    attack=sm.params.settings["attack"],
    scenario=cell["scenario"],
    new_data_fraction=sm.params.new_data_fraction,
    trigger=sm.params.trigger,
    seed=cell["seed"],
    device=sm.params.device,
)
