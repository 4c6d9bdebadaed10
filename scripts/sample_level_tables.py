from poisondetect.logs import run_logged
from poisondetect.report.sample_level import sample_level_tables

sm = snakemake  # noqa: F821
run_logged(sm.log, sample_level_tables, sm.input[0], sm.wildcards.task, dict(sm.output.items()))
