from _common import by_model, cell_of, run_logged

from poisondetect.model_level import calibrate

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    calibrate,
    dict(zip(sm.params.detectors, sm.input.scores, strict=True)),
    dict(zip(sm.params.detectors, sm.input.states, strict=True)),
    by_model(sm.input.metrics),
    sm.input.autoencoder,
    sm.input.genuine,
    sm.input.data,
    sm.output.population,
    sm.output.detection,
    sm.output.bundle,
    cell=cell_of(sm.wildcards),
    calibration=sm.params.calibration,
    n_fit_replicates=sm.params.n_fit,
    trigger=sm.params.trigger,
)
