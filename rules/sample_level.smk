# Sample-level detection (Razmi & Xiong, CAE / CAE+): periodic-update rounds of a binary task,
# cached poisoned rounds per attack, detector families fitted on the pooled first rounds.

SL_TASK = "results/sample_level/{task}/seed{seed}"
SL_CELL = "results/sample_level/{task}/{attack}/p{n_poison}/seed{seed}"
SL_ATTACKS = "flip|optimal|semi_optimal|mixed"


def sl_task(name):
    return SL["tasks"][name]


def sl_families():
    from poisondetect.sample_level import families

    return families(SL["detectors"])


def sl_run_tasks():
    """The tasks to run: sample_level.run_tasks, or every declared task."""
    return SL["run_tasks"] if SL["run_tasks"] is not None else list(SL["tasks"])


def sl_cells():
    if not SL["enabled"]:
        return []
    return [
        dict(task=t, attack=a, n_poison=p, seed=s)
        for t in sl_run_tasks()
        for a in SL["attacks"]
        for p in SL["n_poison"]
        for s in SL["seeds"]
    ]


def sl_family_settings(family):
    """Only the settings a family uses, so a change to one family reruns only its fits."""
    if family == "cae":
        return {k: SL[k] for k in ("autoencoders", "rae", "cae")}
    if family == "magnet":
        return {k: SL[k] for k in ("autoencoders", "magnet")}
    return {}


rule make_rounds:
    input:
        data=lambda w: f"results/data/{sl_task(w.task)['dataset']}.npz",
    output:
        SL_TASK + "/rounds.npz",
    params:
        classes=lambda w: sl_task(w.task)["classes"],
        rounds=lambda w: {k: v for k, v in SL["rounds"].items() if k != "n_detector_rounds"},
    log:
        "logs/sample_level/{task}/seed{seed}/make_rounds.log",
    benchmark:
        "results/benchmarks/sample_level/{task}/seed{seed}/make_rounds.tsv",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/make_rounds.py"


rule poison_rounds:
    input:
        SL_TASK + "/rounds.npz",
    output:
        SL_CELL + "/poisoned.npz",
    wildcard_constraints:
        attack=SL_ATTACKS,
        n_poison=r"\d+",
    params:
        svm=lambda w: sl_svm_params(w.task),
        optimal=lambda w: {} if w.attack == "flip" else SL["optimal"],
    log:
        "logs/sample_level/{task}/{attack}/p{n_poison}/seed{seed}/poison_rounds.log",
    benchmark:
        "results/benchmarks/sample_level/{task}/{attack}/p{n_poison}/seed{seed}/poison_rounds.tsv",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/poison_rounds.py"


rule fit_filter:
    input:
        SL_CELL + "/poisoned.npz",
    output:
        scores=SL_CELL + "/filter/{family}_{train_on}.parquet",
        summary=SL_CELL + "/filter/{family}_{train_on}.json",
    wildcard_constraints:
        attack=SL_ATTACKS,
        n_poison=r"\d+",
        family="cae|od|magnet",
        train_on="contaminated|clean",
    params:
        detectors=SL["detectors"],
        n_detector_rounds=SL["rounds"]["n_detector_rounds"],
        alpha=lambda w: SL["alpha"] if w.family == "cae" else None,
        settings=lambda w: sl_family_settings(w.family),
        arch=lambda w: sl_task(w.task)["detector_arch"],
        svm=lambda w: sl_svm_params(w.task),
        n_train=SL["rounds"]["n_train"],
        device=config["device"],
    resources:
        **gpu_resources(),
    log:
        "logs/sample_level/{task}/{attack}/p{n_poison}/seed{seed}/fit_{family}_{train_on}.log",
    benchmark:
        "results/benchmarks/sample_level/{task}/{attack}/p{n_poison}/seed{seed}/fit_{family}_{train_on}.tsv",
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    script:
        "../scripts/fit_filter.py"


def sl_svm_params(task):
    from poisondetect.sample_level import svm_params

    return svm_params(sl_task(task))


def sl_summaries():
    return [
        (SL_CELL + "/filter/{family}_{train_on}.json").format(family=f, train_on=t, **c)
        for c in sl_cells()
        for f in sl_families()
        for t in SL["train_on"]
    ]


rule collect_sample_level:
    input:
        sl_summaries(),
    output:
        "results/sample_level/filtering.csv",
    log:
        "logs/sample_level/collect.log",
    benchmark:
        "results/benchmarks/sample_level/collect.tsv",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/collect_sample_level.py"
