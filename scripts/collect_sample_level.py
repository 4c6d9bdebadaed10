from _common import run_logged

from poisondetect.sample_level import collect

sm = snakemake  # noqa: F821
run_logged(sm.log, collect, list(sm.input), sm.output[0])
