from _common import by_model, run_logged

from poisondetect.model_level import ae_errors

sm = snakemake  # noqa: F821
run_logged(sm.log, ae_errors, sm.input.autoencoder, by_model(sm.input.activations), sm.output[0])
