from poisondetect.logs import run_logged
from poisondetect.model_level.calibration import calibrate
from poisondetect.model_level.cell import cell_of

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    calibrate,
    list(sm.input.scores),
    list(sm.input.states),
    list(sm.input.metrics),
    sm.input.autoencoder,
    sm.input.genuine,
    sm.input.data,
    sm.output.scores,
    sm.output.detection,
    sm.output.bundle,
    cell=cell_of(sm.wildcards),
    fpr=sm.params.fpr,
    verdict=sm.params.verdict,
    combine=sm.params.combine,
    paper_rule=sm.params.paper_rule,
    n_fit_replicates=sm.params.n_fit,
    trigger=sm.params.trigger,
)
