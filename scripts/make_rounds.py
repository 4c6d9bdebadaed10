from poisondetect.logs import run_logged
from poisondetect.sample_level.poisoning import build_rounds

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    build_rounds,
    sm.input.data,
    sm.output[0],
    classes=sm.params.classes,
    rounds=sm.params.rounds,
    seed=int(sm.wildcards.seed),
)
