from poisondetect.logs import run_logged
from poisondetect.model_level.cell import cell_of
from poisondetect.model_level.scoring import fit_autoencoder

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
