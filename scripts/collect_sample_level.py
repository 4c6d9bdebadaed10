from poisondetect.logs import run_logged
from poisondetect.sample_level.collection import collect

sm = snakemake  # noqa: F821
run_logged(sm.log, collect, list(sm.input), sm.output.filtering, sm.output.conclusions)
