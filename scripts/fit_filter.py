from _common import run_logged

from poisondetect.sample_level import fit_filter

sm = snakemake  # noqa: F821
w = sm.wildcards
n_poison = int(w.n_poison)
run_logged(
    sm.log,
    fit_filter,
    sm.input[0],
    sm.output.scores,
    sm.output.summary,
    detector=w.detector,
    params=sm.params.params,
    shared=sm.params.shared,
    train_on=w.train_on,
    n_detector_rounds=sm.params.n_detector_rounds,
    arch=sm.params.arch,
    svm=sm.params.svm,
    seed=int(w.seed),
    device=sm.params.device,
    cell={
        "task": w.task,
        "attack": w.attack,
        "n_poison": n_poison,
        "poison_rate": n_poison / sm.params.n_train,
        "seed": int(w.seed),
    },
)
