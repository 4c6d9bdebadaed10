from poisondetect.logs import run_logged
from poisondetect.report.sample_level import sample_level_summary_figure

sm = snakemake  # noqa: F821
style = sm.params.style
run_logged(
    sm.log,
    sample_level_summary_figure,
    sm.input[0],
    sm.wildcards.task,
    sm.output.png,
    sm.output.pdf,
    figure=sm.params.figure,
    dpi=style["dpi"],
    palette=style["palette"],
    context=style["context"],
)
