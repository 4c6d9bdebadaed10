from poisondetect.logs import run_logged
from poisondetect.sample_level.networks import fit_network

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    fit_network,
    sm.input[0],
    sm.output[0],
    network=sm.params.network,
    train_on=sm.wildcards.train_on,
    n_detector_rounds=sm.params.n_detector_rounds,
    device=sm.params.device,
)
