from _common import cell_of, run_logged

from poisondetect.model_level import fit_autoencoder

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    fit_autoencoder,
    sm.input.genuine,
    sm.output[0],
    autoencoder=sm.params.autoencoder,
    seed=cell_of(sm.wildcards)["seed"],
    device=sm.params.device,
)
