from _common import by_model, run_logged

from poisondetect.model_level import score_detector

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    score_detector,
    by_model(sm.input.activations),
    sm.output.scores,
    sm.output.state,
    detector=sm.wildcards.detector,
    params=sm.params.detector_params,
    checkpoints=by_model(sm.input.checkpoints) if "checkpoints" in sm.input.keys() else None,
    errors=sm.input.get("errors"),
    n_fit_replicates=sm.params.n_fit,
)
