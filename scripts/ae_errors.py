from poisondetect.logs import run_logged
from poisondetect.model_level.scoring import ae_errors

sm = snakemake  # noqa: F821
run_logged(sm.log, ae_errors, sm.input.autoencoder, list(sm.input.activations), sm.output[0])
