from _common import cell_of, run_logged

from poisondetect.model_level import parse_model_name, score

sm = snakemake  # noqa: F821
variant, epochs = parse_model_name(sm.wildcards.model)
cell = {**cell_of(sm.wildcards), "model": sm.wildcards.model, "variant": variant, "epochs": epochs}
run_logged(
    sm.log,
    score,
    sm.input.detector,
    sm.input.activations,
    sm.input.metrics,
    sm.output.scores,
    sm.output.summary,
    cell=cell,
)
