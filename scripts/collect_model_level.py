from _common import run_logged

from poisondetect.model_level import collect

sm = snakemake  # noqa: F821
cal = sm.params.calibration
run_logged(
    sm.log,
    collect,
    list(sm.input.populations),
    list(sm.input.detections),
    sm.output.scores,
    sm.output.detection,
    sm.output.roc,
    sm.output.curves,
    fpr=cal["fpr"],
    bootstrap=cal["bootstrap"],
    level=cal["level"],
)
