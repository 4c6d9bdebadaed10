# Model-level detection (El Moadine et al.): train M, fine-tune it honestly and with attacks,
# dump penultimate activations on the trigger set, fit the auto-encoder, score every model,
# calibrate, collect.


rule prepare_data:
    output:
        "results/data/{dataset}.npz",
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_data/{dataset}.tsv"
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        fmt=lambda w: dataset_spec(w.dataset)["format"],
        path=lambda w: dataset_spec(w.dataset)["path"],
        options=lambda w: {
            k: v
            for k, v in dataset_spec(w.dataset).items()
            if k not in ("format", "path", "label")
        },
        require_classes=lambda w: configured_classes(config, w.dataset),
    script:
        "../scripts/prepare_data.py"


rule train_genuine:
    input:
        data="results/data/{dataset}.npz",
    output:
        model=ml_path("models/genuine.safetensors"),
        metrics=ml_path("eval/genuine.json"),
        activations=ml_path("activations/genuine.parquet"),
    log:
        ml_path("train_genuine.log", "logs"),
    benchmark:
        ml_path("train_genuine.tsv", "results/benchmarks")
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
    params:
        width=ML["width"],
        train=ML["train"],
        new_data_fraction=ML["new_data_fraction"],
        trigger=ML["trigger_set"],
        device=config["device"],
    script:
        "../scripts/train_genuine.py"


# Fine-tune M into the populations: each job fine-tunes (honestly or with an attack), evaluates
# and dumps the penultimate activations on the trigger set of one model (jobs: per_model) or of
# every replicate of one honest variant or attack (jobs: per_population: the same rule, used
# with the outputs of a whole population).
rule finetune:
    input:
        data="results/data/{dataset}.npz",
        genuine=ml_path("models/genuine.safetensors"),
    output:
        **{key: ml_path(rel) for key, rel in population.MODEL_FILES.items()},
    log:
        ml_path("finetune_{model}.log", "logs"),
    benchmark:
        ml_path("finetune_{model}.tsv", "results/benchmarks")
    wildcard_constraints:
        model=population.FINETUNE_PATTERN,
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
    params:
        cell_dir=ml_cell_dir,
        models=ml_job_models,
        train=ML["train"],
        settings=ml_finetune_settings,
        new_data_fraction=ML["new_data_fraction"],
        trigger=ML["trigger_set"],
        device=config["device"],
    script:
        "../scripts/finetune.py"


if ML["jobs"] == "per_population":

    use rule finetune as finetune_honest with:
        output:
            **finetune_outputs("{honest}", ML["finetune"]["replicates"]),
        log:
            ml_path("finetune_{honest}.log", "logs"),
        benchmark:
            ml_path("finetune_{honest}.tsv", "results/benchmarks")
        wildcard_constraints:
            honest=population.HONEST_PATTERN,

    use rule finetune as finetune_attack with:
        output:
            **finetune_outputs("{attack_population}", ML["attacks"]["replicates"]),
        log:
            ml_path("finetune_{attack_population}.log", "logs"),
        benchmark:
            ml_path("finetune_{attack_population}.tsv", "results/benchmarks")
        wildcard_constraints:
            attack_population=population.ATTACK_PATTERN,

    ruleorder: finetune_honest > finetune
    ruleorder: finetune_attack > finetune

    if population.honest_replicates(ML, population.SAMPLED):

        # the sampled honest null: a population of its own size
        use rule finetune as finetune_sampled with:
            output:
                **finetune_outputs(
                    f"honest_{population.SAMPLED}",
                    population.honest_replicates(ML, population.SAMPLED),
                ),
            log:
                ml_path(f"finetune_honest_{population.SAMPLED}.log", "logs"),
            benchmark:
                ml_path(
                    f"finetune_honest_{population.SAMPLED}.tsv", "results/benchmarks"
                )
            params:
                models=[
                    population.honest_name(population.SAMPLED, r)
                    for r in range(
                        population.honest_replicates(ML, population.SAMPLED)
                    )
                ],
                settings={"honest": ML["finetune"]["sampled"], "attack": None},

        ruleorder: finetune_sampled > finetune_honest > finetune


rule fit_autoencoder:
    input:
        genuine=ml_path("activations/genuine.parquet"),
    output:
        ml_path("autoencoder.safetensors"),
    log:
        ml_path("fit_autoencoder.log", "logs"),
    benchmark:
        ml_path("fit_autoencoder.tsv", "results/benchmarks")
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
    params:
        autoencoder=ML["autoencoder"],
        device=config["device"],
    script:
        "../scripts/fit_autoencoder.py"


rule ae_errors:
    input:
        autoencoder=ml_path("autoencoder.safetensors"),
        activations=ml_model_files("activations"),
    output:
        ml_path("scores/ae_errors.parquet"),
    log:
        ml_path("ae_errors.log", "logs"),
    benchmark:
        ml_path("ae_errors.tsv", "results/benchmarks")
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/ae_errors.py"


# One job per detector and cell: fit on M (and the honest fitting replicates), score every model.
rule score_detector:
    input:
        unpack(ml_detector_inputs),
    output:
        scores=ml_path("scores/{detector}.csv"),
        state=ml_path("detectors/{detector}.safetensors"),
    log:
        ml_path("score_{detector}.log", "logs"),
    benchmark:
        ml_path("score_{detector}.tsv", "results/benchmarks")
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:  # a GPU for the detectors that run the networks (trigger inversion), else none
        gpu=ml_detector_resource("gpu"),
        cpus_per_gpu=ml_detector_resource("cpus_per_gpu"),
        mem_mb=ml_detector_resource("mem_mb"),
        runtime=ml_detector_resource("runtime"),
    params:
        detector_params=lambda w: ML["detectors"][w.detector],
        n_fit=ml_n_fit(),
        reference=ml_reference,
        trigger=ml_detector_trigger,
        device=ml_detector_device,
    script:
        "../scripts/score_detector.py"


rule calibrate:
    input:
        scores=expand(
            ml_path("scores/{detector}.csv"),
            detector=ML["detectors"],
            allow_missing=True,
        ),
        states=expand(
            ml_path("detectors/{detector}.safetensors"),
            detector=ML["detectors"],
            allow_missing=True,
        ),
        metrics=ml_model_files("metrics"),
        autoencoder=ml_path("autoencoder.safetensors"),
        genuine=ml_path("activations/genuine.parquet"),
        data="results/data/{dataset}.npz",
    output:
        scores=ml_path("scores.csv"),
        detection=ml_path("detection.csv"),
        bundle=ml_path("detector.safetensors"),
    log:
        ml_path("calibrate.log", "logs"),
    benchmark:
        ml_path("calibrate.tsv", "results/benchmarks")
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        fpr=ML["calibration"]["fpr"],
        verdict=ML["calibration"]["verdict"],
        combine=ML["calibration"]["combine"],
        paper_rule=ML["calibration"]["paper_rule"],
        n_fit=ml_n_fit(),
        trigger=ML["trigger_set"],
    script:
        "../scripts/calibrate.py"


rule collect_model_level:
    input:
        scores=ml_cell_files("scores.csv"),
        detections=ml_cell_files("detection.csv"),
        bundles=ml_cell_files("detector.safetensors"),
    output:
        scores="results/model_level/scores.csv",
        detection="results/model_level/detection.csv",
        roc="results/model_level/roc.csv",
        curves="results/model_level/roc_curves.csv",
        conclusions="results/model_level/conclusions.txt",
        bundles="results/model_level/bundles.csv",
    log:
        "logs/model_level/collect.log",
    benchmark:
        "results/benchmarks/model_level/collect.tsv"
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    params:
        fpr=ML["calibration"]["fpr"],
        bootstrap=ML["calibration"]["bootstrap"],
        level=ML["calibration"]["level"],
        min_success=ML["calibration"]["min_success"],
        # the combined detector's block: its leave-one-family-out refits (None: not configured)
        combined=ML["detectors"].get("combined"),
    script:
        "../scripts/collect_model_level.py"
