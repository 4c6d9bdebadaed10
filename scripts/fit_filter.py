from poisondetect.logs import run_logged
from poisondetect.sample_level.filters import fit_filters

sm = snakemake  # noqa: F821
w = sm.wildcards
run_logged(
    sm.log,
    fit_filters,
    sm.input.poisoned,
    sm.params.cell_dir,
    detectors=sm.params.detectors,
    shared=sm.params.shared,
    train_on=w.train_on,
    networks=list(sm.input.get("networks", [])),
    n_detector_rounds=sm.params.n_detector_rounds,
    arch=sm.params.arch,
    svm=sm.params.svm,
    seed=int(w.seed),
    device=sm.params.device,
    cell={
        "task": w.task,
        "attack": w.attack,
        "n_poison": int(w.n_poison),
        "poison_rate": sm.params.poison_rate,
        "seed": int(w.seed),
    },
)
