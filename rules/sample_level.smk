# Sample-level detection (Razmi & Xiong, CAE / CAE+): periodic-update rounds of a binary task,
# cached poisoned rounds per attack, each registered detector fitted on the pooled first rounds,
# and the analyses (tidy CSVs) the report draws.


localrules:
    analyse_filtering,
    analyse_scores,


rule make_rounds:
    input:
        data=lambda w: f"results/data/{sl_task(w.task)['dataset']}.npz",
    output:
        sl_task_path("rounds.npz"),
    log:
        sl_task_path("make_rounds.log", root="logs"),
    benchmark:
        sl_task_path("make_rounds.tsv", root="results/benchmarks")
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
        sl_path("poison_rounds.log", root="logs"),
    benchmark:
        sl_path("poison_rounds.tsv", root="results/benchmarks")
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        svm=lambda w: sl_svm_params(w.task),
        optimal=lambda w: {} if w.attack == "flip" else SL["optimal"],
    script:
        "../scripts/poison_rounds.py"


# Fit the detectors on the first rounds of a cell, filter and retrain on the others: one job per
# detector (sample_level.jobs: per_detector) or one job for every detector of a cell (per_cell:
# the same rule, used with the outputs of every detector).
# Fit each network (an RAE or a CAE) once per cell and train_on, for every detector made of it
# (CAE+, RAE, CAE; MagNet, MagNet + reformer): its settings name it (detectors.networks), so a
# change that acts only at scoring time (CAE+'s alpha) refits nothing.
rule fit_network:
    input:
        sl_path("poisoned.npz"),
    output:
        sl_path(NETWORK_FILE),
    log:
        sl_path("fit_{network}_{train_on}.log", root="logs"),
    benchmark:
        sl_path("fit_{network}_{train_on}.tsv", root="results/benchmarks")
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
    params:
        network=sl_network,
        n_detector_rounds=SL["rounds"]["n_detector_rounds"],
        device=config["device"],
    script:
        "../scripts/fit_network.py"


rule fit_filter:
    input:
        unpack(sl_filter_inputs),
    output:
        scores=sl_path(FILTER_FILES["scores"]),
        summary=sl_path(FILTER_FILES["summary"]),
    log:
        sl_path("fit_{detector}_{train_on}.log", root="logs"),
    benchmark:
        sl_path("fit_{detector}_{train_on}.tsv", root="results/benchmarks")
    wildcard_constraints:
        detector=names.regex(SL_DETECTORS) or "none",
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
    params:
        cell_dir=sl_cell_dir,
        detectors=lambda w: {w.detector: SL[w.detector]},
        shared=SL["autoencoders"],
        n_detector_rounds=SL["rounds"]["n_detector_rounds"],
        arch=lambda w: sl_task(w.task)["detector_arch"],
        svm=lambda w: sl_svm_params(w.task),
        poison_rate=lambda w: int(w.n_poison) / SL["rounds"]["n_train"],
        device=config["device"],
    script:
        "../scripts/fit_filter.py"


if SL["jobs"] == "per_cell":

    use rule fit_filter as fit_filters with:
        input:  # the networks are fitted in the job, once each
            poisoned=sl_path("poisoned.npz"),
        output:
            scores=sl_filter_files("scores", SL_DETECTORS),
            summary=sl_filter_files("summary", SL_DETECTORS),
        log:
            sl_path("fit_all_{train_on}.log", root="logs"),
        benchmark:
            sl_path("fit_all_{train_on}.tsv", root="results/benchmarks")
        wildcard_constraints:
            train_on=names.regex(names.TRAIN_ON),
        params:
            detectors={d: SL[d] for d in SL_DETECTORS},

    ruleorder: fit_filters > fit_filter


rule collect_sample_level:
    input:
        sl_summaries(),
    output:
        filtering="results/sample_level/filtering.csv",
        conclusions="results/sample_level/conclusions.txt",
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


rule analyse_filtering:
    input:
        "results/sample_level/filtering.csv",
    output:
        accuracy=sl_analysis("accuracy_vs_rate"),
        clean_vs_contaminated=sl_analysis("clean_vs_contaminated"),
        ablation=sl_analysis("ablation"),
    log:
        "logs/sample_level/{task}_analyse_filtering.log",
    benchmark:
        "results/benchmarks/sample_level/{task}_analyse_filtering.tsv"
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        ablation=SL_FIG["ablation"],
        attacks=SL["attacks"],
        n_poison=max(SL["n_poison"]),
        seed=SL["seeds"][0],
    script:
        "../scripts/analyse_filtering.py"


rule analyse_scores:
    input:
        unpack(sl_figure_scores),
    output:
        scatter=sl_analysis("scatter"),
        f1_vs_k=sl_analysis("f1_vs_k"),
        sweep=sl_analysis("sweep"),
    log:
        "logs/sample_level/{task}_analyse_scores.log",
    benchmark:
        "results/benchmarks/sample_level/{task}_analyse_scores.tsv"
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        detector=SL_FIG["detector"],
        params=SL[SL_FIG["detector"]],
        scatter=SL_FIG["scatter"],
        sweep_param=SL_FIG["sweep_param"],
        sweep_values=SL_FIG["sweep_values"],
        n_poison=max(SL["n_poison"]),
        seed=SL["seeds"][0],
    script:
        "../scripts/analyse_scores.py"
