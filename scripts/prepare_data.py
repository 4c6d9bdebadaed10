from _common import run_logged

from poisondetect.model_level import prepare

p = snakemake.params  # noqa: F821
run_logged(snakemake.log, prepare, p.fmt, p.path, snakemake.output[0], p.options)  # noqa: F821
