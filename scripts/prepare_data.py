from _common import run_logged

from poisondetect.config import configured_classes
from poisondetect.model_level import prepare

sm = snakemake  # noqa: F821
p = sm.params
# Every class the config uses on this data set is checked against the data before the cache is
# written (the planning-time check covers the data sets whose classes are known beforehand).
options = {**p.options, "require_classes": configured_classes(sm.config, sm.wildcards.dataset)}
run_logged(sm.log, prepare, p.fmt, p.path, sm.output[0], options)
