from poisondetect.logs import run_logged
from poisondetect.report.model_level import model_level_tables

sm = snakemake  # noqa: F821
run_logged(sm.log, model_level_tables, sm.input.detection, sm.input.roc, dict(sm.output.items()))
