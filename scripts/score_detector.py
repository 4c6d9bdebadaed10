from poisondetect.logs import run_logged
from poisondetect.model_level.scoring import score_detector

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    score_detector,
    list(sm.input.activations),
    sm.output.scores,
    sm.output.state,
    detector=sm.wildcards.detector,
    params=sm.params.detector_params,
    checkpoints=list(sm.input.get("checkpoints", [])),
    errors=sm.input.get("errors"),
    statistics=list(sm.input.get("statistics", [])),
    n_fit_replicates=sm.params.n_fit,
    reference=sm.params.reference,
    data=sm.input.get("data"),
    trigger=sm.params.trigger,
    seed=int(sm.wildcards.seed),
    device=sm.params.device,
)
