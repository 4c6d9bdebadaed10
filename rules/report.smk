# Tables and figures of both parts, marked for `snakemake --report`.


localrules:
    collect_model_level,
    model_level_tables,
    model_level_figure,


rule model_level_tables:
    input:
        "results/model_level/detection.csv",
    output:
        table1_csv=report(
            "results/model_level/table1_accuracy.csv",
            caption="../report/table1.rst",
            category="Model level",
            subcategory="Tables",
        ),
        table1_tex="results/model_level/table1_accuracy.tex",
        table2_csv=report(
            "results/model_level/table2_attack_success.csv",
            caption="../report/table2.rst",
            category="Model level",
            subcategory="Tables",
        ),
        table2_tex="results/model_level/table2_attack_success.tex",
        table3_csv=report(
            "results/model_level/table3_detection.csv",
            caption="../report/table3.rst",
            category="Model level",
            subcategory="Tables",
        ),
        table3_tex="results/model_level/table3_detection.tex",
    log:
        "logs/model_level/tables.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/model_level_tables.py"


rule model_level_figure:
    input:
        scores=expand(ML_CELL + "/scores/{model}.parquet", model=ml_models(), allow_missing=True),
        summaries=expand(ML_CELL + "/scores/{model}.json", model=ml_models(), allow_missing=True),
    output:
        png=report(
            "results/model_level/figures/fig5_{dataset}_{arch}_{scenario}_seed{seed}.png",
            caption="../report/fig5.rst",
            category="Model level",
            subcategory="Figure 5",
        ),
        pdf="results/model_level/figures/fig5_{dataset}_{arch}_{scenario}_seed{seed}.pdf",
    params:
        models=ml_models(),
        style=config["report"],
        label=lambda w: dataset_spec(w.dataset)["label"] or w.dataset,
    log:
        "logs/model_level/fig5_{dataset}_{arch}_{scenario}_seed{seed}.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/model_level_figure.py"


def all_targets():
    targets = []
    if ML["enabled"] and ml_cells():
        targets += rules.model_level_tables.output
        targets += [
            "results/model_level/figures/fig5_{dataset}_{arch}_{scenario}_seed{seed}.png".format(
                **c
            )
            for c in ml_cells()
        ]
    targets += sample_level_targets()
    return targets
