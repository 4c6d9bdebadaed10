from _common import run_logged

from poisondetect.report import sample_level_accuracy_figure, sample_level_clean_vs_contaminated

sm = snakemake  # noqa: F821
style = sm.params.style
plot = (
    sample_level_accuracy_figure
    if sm.rule == "sample_level_accuracy_figure"
    else sample_level_clean_vs_contaminated
)
run_logged(
    sm.log,
    plot,
    sm.input[0],
    sm.wildcards.task,
    sm.output.png,
    sm.output.pdf,
    dpi=style["dpi"],
    palette=style["palette"],
    context=style["context"],
)
