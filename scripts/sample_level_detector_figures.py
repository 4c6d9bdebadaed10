from poisondetect.logs import run_logged
from poisondetect.report.sample_level import sample_level_detector_figures

sm = snakemake  # noqa: F821
style = sm.params.style
run_logged(
    sm.log,
    sample_level_detector_figures,
    dict(sm.input.items()),
    sm.wildcards.task,
    dict(sm.output.items()),
    dpi=style["dpi"],
    palette=style["palette"],
    context=style["context"],
)
