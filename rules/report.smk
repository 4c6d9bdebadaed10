# Tables and figures of both parts, marked for `snakemake --report`.


localrules:
    collect_model_level,
    model_level_tables,
    model_level_figure,
    model_level_roc_figures,
    model_level_success_figure,
    collect_sample_level,
    sample_level_tables,
    sample_level_detector_figures,
    sample_level_accuracy_figure,
    sample_level_clean_vs_contaminated,


rule model_level_tables:
    input:
        detection="results/model_level/detection.csv",
        roc="results/model_level/roc.csv",
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
        roc_csv=report(
            "results/model_level/table_roc.csv",
            caption="../report/table_roc.rst",
            category="Model level",
            subcategory="Tables",
        ),
        roc_tex="results/model_level/table_roc.tex",
    log:
        "logs/model_level/tables.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        populations=ML_POPULATIONS,  # for the captions
        variants=population.describe_variants(ML),
    script:
        "../scripts/model_level_tables.py"


rule model_level_figure:
    input:
        errors=ml_path("scores/ae_errors.parquet"),
        detection=ml_path("detection.csv"),
    output:
        png=report(
            "results/model_level/figures/fig5_{dataset}_{arch}_{scenario}_seed{seed}.png",
            caption="../report/fig5.rst",
            category="Model level",
            subcategory="Figure 5",
        ),
        pdf="results/model_level/figures/fig5_{dataset}_{arch}_{scenario}_seed{seed}.pdf",
    log:
        "logs/model_level/fig5_{dataset}_{arch}_{scenario}_seed{seed}.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        style=config["report"],
        label=lambda w: dataset_spec(w.dataset)["label"] or w.dataset,
        populations=ML_POPULATIONS,
    script:
        "../scripts/model_level_figure.py"


rule model_level_roc_figures:
    input:
        roc="results/model_level/roc.csv",
        curves="results/model_level/roc_curves.csv",
    output:
        roc_png=report(
            "results/model_level/figures/roc_{dataset}_{arch}_{scenario}.png",
            caption="../report/roc.rst",
            category="Model level",
            subcategory="ROC",
        ),
        roc_pdf="results/model_level/figures/roc_{dataset}_{arch}_{scenario}.pdf",
        auroc_png=report(
            "results/model_level/figures/auroc_{dataset}_{arch}_{scenario}.png",
            caption="../report/auroc.rst",
            category="Model level",
            subcategory="ROC",
        ),
        auroc_pdf="results/model_level/figures/auroc_{dataset}_{arch}_{scenario}.pdf",
    log:
        "logs/model_level/roc_{dataset}_{arch}_{scenario}.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        style=config["report"],
        fpr=ML["calibration"]["fpr"],
        label=lambda w: dataset_spec(w.dataset)["label"] or w.dataset,
        populations=ML_POPULATIONS,
    script:
        "../scripts/model_level_roc_figures.py"


rule model_level_success_figure:
    input:
        scores="results/model_level/scores.csv",
        detection="results/model_level/detection.csv",
    output:
        png=report(
            "results/model_level/figures/success_{dataset}_{arch}_{scenario}.png",
            caption="../report/success.rst",
            category="Model level",
            subcategory="ROC",
        ),
        pdf="results/model_level/figures/success_{dataset}_{arch}_{scenario}.pdf",
    log:
        "logs/model_level/success_{dataset}_{arch}_{scenario}.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        style=config["report"],
        min_success=ML["calibration"]["min_success"],
        label=lambda w: dataset_spec(w.dataset)["label"] or w.dataset,
        populations=ML_POPULATIONS,
    script:
        "../scripts/model_level_success_figure.py"


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


rule sample_level_detector_figures:
    input:
        scatter=sl_analysis("scatter"),
        f1_vs_k=sl_analysis("f1_vs_k"),
        sweep=sl_analysis("sweep"),
        ablation=sl_analysis("ablation"),
    output:
        **{
            f"fig{i}_{ext}": (
                report(
                    sl_fig(f"fig{i}.{ext}"),
                    caption=f"../report/sl_fig{i}.rst",
                    category="Sample level",
                    subcategory="{task}",
                )
                if ext == "png"
                else sl_fig(f"fig{i}.{ext}")
            )
            for i in (2, 3, 4, 5)
            for ext in ("png", "pdf")
        },
    log:
        "logs/sample_level/{task}_detector_figures.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        n_poison=max(SL["n_poison"]),  # for the captions
        style=config["report"],
    script:
        "../scripts/sample_level_detector_figures.py"


rule sample_level_accuracy_figure:
    input:
        sl_analysis("accuracy_vs_rate"),
    output:
        png=report(
            sl_fig("fig6.png"),
            caption="../report/sl_fig6.rst",
            category="Sample level",
            subcategory="{task}",
        ),
        pdf=sl_fig("fig6.pdf"),
    log:
        "logs/sample_level/{task}_fig6.log",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        figure="accuracy",
        style=config["report"],
    script:
        "../scripts/sample_level_figure.py"


use rule sample_level_accuracy_figure as sample_level_clean_vs_contaminated with:
    input:
        sl_analysis("clean_vs_contaminated"),
    output:
        png=report(
            sl_fig("fig7.png"),
            caption="../report/sl_fig7.rst",
            category="Sample level",
            subcategory="{task}",
        ),
        pdf=sl_fig("fig7.pdf"),
    log:
        "logs/sample_level/{task}_fig7.log",
    params:
        figure="clean_vs_contaminated",
