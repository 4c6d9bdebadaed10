from poisondetect.logs import run_logged
from poisondetect.report.model_level import model_level_roc_figures

sm = snakemake  # noqa: F821
w = sm.wildcards
style = sm.params.style
run_logged(
    sm.log,
    model_level_roc_figures,
    sm.input.roc,
    sm.input.curves,
    dict(sm.output.items()),
    dataset=w.dataset,
    arch=w.arch,
    scenario=w.scenario,
    title=f"{sm.params.label} / {w.arch} / {w.scenario}",
    fpr=sm.params.fpr,
    dpi=style["dpi"],
    palette=style["palette"],
    context=style["context"],
)
