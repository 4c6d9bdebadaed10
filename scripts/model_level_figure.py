from poisondetect.logs import run_logged
from poisondetect.report.model_level import model_level_figure

sm = snakemake  # noqa: F821
w = sm.wildcards
style = sm.params.style
run_logged(
    sm.log,
    model_level_figure,
    sm.input.errors,
    sm.input.detection,
    sm.output.png,
    sm.output.pdf,
    f"{sm.params.label} / {w.arch} / {w.scenario} / seed {w.seed}",
    bins=style["bins"],
    dpi=style["dpi"],
    palette=style["palette"],
    context=style["context"],
)
