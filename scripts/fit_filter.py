from pathlib import Path

from _common import run_logged

from poisondetect.sample_level import fit_filter

sm = snakemake  # noqa: F821
w = sm.wildcards
n_poison = int(w.n_poison)


def files(key):
    value = sm.output[key]
    return [value] if isinstance(value, str) else list(value)


def main():
    """Every detector of the job in turn: one (fit_filter) or all of the cell (fit_filters)."""
    for scores, summary in zip(files("scores"), files("summary"), strict=True):
        detector = Path(scores).stem.removesuffix(f"_{w.train_on}")
        params = sm.params.params
        fit_filter(
            sm.input[0],
            scores,
            summary,
            detector=detector,
            params=params[detector] if "detector" not in w.keys() else params,
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


run_logged(sm.log, main)
