from poisondetect.data import prepare
from poisondetect.logs import run_logged

sm = snakemake  # noqa: F821
p = sm.params
# Every class the config uses on this data set is checked against the data before the cache is
# written (the planning-time check covers the data sets whose classes are known beforehand).
run_logged(
    sm.log,
    prepare,
    p.fmt,
    p.path,
    sm.output[0],
    {**p.options, "require_classes": p.require_classes},
)
