from _common import run_logged

from poisondetect.io import read_json
from poisondetect.report import model_level_figure

sm = snakemake  # noqa: F821
models = sm.params.models
w = sm.wildcards
style = sm.params.style


def main():
    model_level_figure(
        dict(zip(models, sm.input.scores, strict=True)),
        {m: read_json(p) for m, p in zip(models, sm.input.summaries, strict=True)},
        sm.output.png,
        sm.output.pdf,
        f"{sm.params.label} / {w.arch} / {w.scenario} / seed {w.seed}",
        bins=style["bins"],
        dpi=style["dpi"],
        palette=style["palette"],
        context=style["context"],
    )


run_logged(sm.log, main)
