from _common import cell_of, run_logged

from poisondetect.model_level import fit_detector

sm = snakemake  # noqa: F821
cell = cell_of(sm.wildcards)
run_logged(
    sm.log,
    fit_detector,
    sm.input.genuine,
    sm.input.honest,
    sm.output[0],
    data=sm.input.data,
    autoencoder=sm.params.autoencoder,
    max_samples=sm.params.max_samples,
    seed=cell["seed"],
    device=sm.params.device,
)
