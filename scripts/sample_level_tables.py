from _common import run_logged

from poisondetect.report import sample_level_tables

sm = snakemake  # noqa: F821
run_logged(sm.log, sample_level_tables, sm.input[0], sm.wildcards.task, dict(sm.output.items()))
