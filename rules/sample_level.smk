# Sample-level detection (Razmi & Xiong, CAE / CAE+): periodic-update rounds of a binary task,
# cached poisoned rounds per attack, detector families fitted on the pooled first rounds.

SL_ATTACKS = "flip|optimal|semi_optimal|mixed"


rule make_rounds:
    input:
        data=lambda w: f"results/data/{sl_task(w.task)['dataset']}.npz",
    output:
        sl_task_path("rounds.npz"),
    log:
        "logs/sample_level/{task}/seed{seed}/make_rounds.log",
    benchmark:
        "results/benchmarks/sample_level/{task}/seed{seed}/make_rounds.tsv"
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        classes=lambda w: sl_task(w.task)["classes"],
        rounds=lambda w: {
            k: v for k, v in SL["rounds"].items() if k != "n_detector_rounds"
        },
    script:
        "../scripts/make_rounds.py"


rule poison_rounds:
    input:
        sl_task_path("rounds.npz"),
    output:
        sl_path("poisoned.npz"),
    log:
        "logs/sample_level/{task}/{attack}/p{n_poison}/seed{seed}/poison_rounds.log",
    benchmark:
        "results/benchmarks/sample_level/{task}/{attack}/p{n_poison}/seed{seed}/poison_rounds.tsv"
    wildcard_constraints:
        attack=SL_ATTACKS,
        n_poison=r"\d+",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        svm=lambda w: sl_svm_params(w.task),
        optimal=lambda w: {} if w.attack == "flip" else SL["optimal"],
    script:
        "../scripts/poison_rounds.py"


rule fit_filter:
    input:
        sl_path("poisoned.npz"),
    output:
        scores=sl_path("filter/{family}_{train_on}.parquet"),
        summary=sl_path("filter/{family}_{train_on}.json"),
    log:
        "logs/sample_level/{task}/{attack}/p{n_poison}/seed{seed}/fit_{family}_{train_on}.log",
    benchmark:
        "results/benchmarks/sample_level/{task}/{attack}/p{n_poison}/seed{seed}/fit_{family}_{train_on}.tsv"
    wildcard_constraints:
        attack=SL_ATTACKS,
        n_poison=r"\d+",
        family="cae|od|magnet",
        train_on="contaminated|clean",
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
    params:
        detectors=SL["detectors"],
        n_detector_rounds=SL["rounds"]["n_detector_rounds"],
        alpha=lambda w: SL["alpha"] if w.family == "cae" else None,
        settings=lambda w: sl_family_settings(w.family),
        arch=lambda w: sl_task(w.task)["detector_arch"],
        svm=lambda w: sl_svm_params(w.task),
        n_train=SL["rounds"]["n_train"],
        device=config["device"],
    script:
        "../scripts/fit_filter.py"


rule collect_sample_level:
    input:
        sl_summaries(),
    output:
        "results/sample_level/filtering.csv",
    log:
        "logs/sample_level/collect.log",
    benchmark:
        "results/benchmarks/sample_level/collect.tsv"
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/collect_sample_level.py"
