from poisondetect.logs import run_logged
from poisondetect.sample_level.poisoning import poison_all

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    poison_all,
    sm.input[0],
    sm.output[0],
    attack=sm.wildcards.attack,
    n_poison=int(sm.wildcards.n_poison),
    svm=sm.params.svm,
    optimal=sm.params.optimal,
    seed=int(sm.wildcards.seed),
)
