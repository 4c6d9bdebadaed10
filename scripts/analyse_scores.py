from poisondetect.logs import run_logged
from poisondetect.sample_level.analyses import analyse_scores

sm = snakemake  # noqa: F821
run_logged(
    sm.log,
    analyse_scores,
    dict(sm.input.items()),
    dict(sm.output.items()),
    detector=sm.params.detector,
    params=sm.params.params,
    scatter=sm.params.scatter,
    sweep_param=sm.params.sweep_param,
    sweep_values=sm.params.sweep_values,
    n_poison=sm.params.n_poison,
    seed=sm.params.seed,
)
