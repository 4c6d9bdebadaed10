from poisondetect.logs import run_logged
from poisondetect.sample_level.analyses import analyse_filtering

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    analyse_filtering,
    sm.input[0],
    sm.wildcards.task,
    dict(sm.output.items()),
    ablation=sm.params.ablation,
    attacks=sm.params.attacks,
    n_poison=sm.params.n_poison,
    seed=sm.params.seed,
)
