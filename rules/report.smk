# Tables and figures of both parts, marked for `snakemake --report`.


localrules:
    collect_model_level,
    model_level_tables,
    model_level_figure,
    collect_sample_level,
    sample_level_tables,
    sample_level_cae_figures,
    sample_level_accuracy_figure,
    sample_level_clean_vs_contaminated,


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


SL_FIG = "results/sample_level/figures/{task}_"


def sl_cae_scores(w):
    """The CAE family's scores at the largest poison count, for every attack of the task."""
    n = max(SL["n_poison"])
    seed = SL["seeds"][0]
    return {
        a: f"results/sample_level/{w.task}/{a}/p{n}/seed{seed}/filter/cae_contaminated.parquet"
        for a in SL["attacks"]
    }


rule sample_level_tables:
    input:
        "results/sample_level/filtering.csv",
    output:
        f1_csv=report(
            "results/sample_level/{task}_f1.csv",
            caption="../report/sl_tables.rst",
            category="Sample level",
            subcategory="{task}",
        ),
        f1_tex="results/sample_level/{task}_f1.tex",
        acc_csv=report(
            "results/sample_level/{task}_accuracy.csv",
            caption="../report/sl_tables.rst",
            category="Sample level",
            subcategory="{task}",
        ),
        acc_tex="results/sample_level/{task}_accuracy.tex",
    log:
        "logs/sample_level/{task}_tables.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/sample_level_tables.py"


rule sample_level_cae_figures:
    input:
        unpack(sl_cae_scores),
    output:
        **{
            f"fig{i}_{ext}": report(
                SL_FIG + f"fig{i}.{ext}",
                caption=f"../report/sl_fig{i}.rst",
                category="Sample level",
                subcategory="{task}",
            )
            if ext == "png"
            else SL_FIG + f"fig{i}.{ext}"
            for i in (2, 3, 4, 5)
            for ext in ("png", "pdf")
        },
    params:
        n_poison=max(SL["n_poison"]),
        alpha=SL["alpha"],
        alpha_grid=SL["alpha_grid"],
        seed=SL["seeds"][0],
        style=config["report"],
    log:
        "logs/sample_level/{task}_cae_figures.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/sample_level_cae_figures.py"


rule sample_level_accuracy_figure:
    input:
        "results/sample_level/filtering.csv",
    output:
        png=report(
            SL_FIG + "fig6.png",
            caption="../report/sl_fig6.rst",
            category="Sample level",
            subcategory="{task}",
        ),
        pdf=SL_FIG + "fig6.pdf",
    params:
        style=config["report"],
    log:
        "logs/sample_level/{task}_fig6.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/sample_level_figure.py"


rule sample_level_clean_vs_contaminated:
    input:
        "results/sample_level/filtering.csv",
    output:
        png=report(
            SL_FIG + "fig7.png",
            caption="../report/sl_fig7.rst",
            category="Sample level",
            subcategory="{task}",
        ),
        pdf=SL_FIG + "fig7.pdf",
    params:
        style=config["report"],
    log:
        "logs/sample_level/{task}_fig7.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/sample_level_figure.py"


def sample_level_targets():
    if not SL["enabled"] or not sl_cells():
        return []
    targets = ["results/sample_level/filtering.csv"]
    for task in sl_run_tasks():
        targets += [f"results/sample_level/{task}_f1.tex", f"results/sample_level/{task}_accuracy.tex"]
        targets.append(SL_FIG.format(task=task) + "fig6.png")
        if "cae" in sl_families():
            targets += [SL_FIG.format(task=task) + f"fig{i}.png" for i in (2, 3, 4, 5)]
        if "clean" in SL["train_on"] and "contaminated" in SL["train_on"]:
            targets.append(SL_FIG.format(task=task) + "fig7.png")
    return targets


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
