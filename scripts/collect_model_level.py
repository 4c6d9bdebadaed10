from poisondetect.logs import run_logged
from poisondetect.model_level.collection import collect

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    collect,
    list(sm.input.scores),
    list(sm.input.detections),
    sm.output.scores,
    sm.output.detection,
    sm.output.roc,
    sm.output.curves,
    sm.output.conclusions,
    fpr=sm.params.fpr,
    bootstrap=sm.params.bootstrap,
    level=sm.params.level,
    min_success=sm.params.min_success,
    combined=sm.params.combined,
    bundles=list(sm.input.bundles),
    bundles_out=sm.output.bundles,
)
