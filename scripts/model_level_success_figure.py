from poisondetect.logs import run_logged
from poisondetect.report.model_level import model_level_success_figure

sm = snakemake  # noqa: F821
w = sm.wildcards
style = sm.params.style
run_logged(
    sm.log,
    model_level_success_figure,
    sm.input.scores,
    sm.input.detection,
    sm.output.png,
    sm.output.pdf,
    dataset=w.dataset,
    arch=w.arch,
    scenario=w.scenario,
    title=f"{sm.params.label} / {w.arch} / {w.scenario}",
    min_success=sm.params.min_success,
    dpi=style["dpi"],
    palette=style["palette"],
    context=style["context"],
)
