from _common import run_logged

from poisondetect.report import sample_level_cae_figures

sm = snakemake  # noqa: F821
style = sm.params.style
scores = {(attack, sm.params.n_poison): path for attack, path in sm.input.items()}
run_logged(
    sm.log,
    sample_level_cae_figures,
    scores,
    sm.wildcards.task,
    sm.params.alpha,
    sm.params.alpha_grid,
    dict(sm.output.items()),
    seed=sm.params.seed,
    dpi=style["dpi"],
    palette=style["palette"],
    context=style["context"],
)
