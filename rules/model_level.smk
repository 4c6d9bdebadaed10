# Model-level detection (El Moadine et al.): train M, fine-tune it honestly and with attacks,
# dump penultimate activations on the trigger set, fit the auto-encoder, score every model.


rule prepare_data:
    output:
        "results/data/{dataset}.npz",
    params:
        fmt=lambda w: dataset_spec(w.dataset)["format"],
        path=lambda w: dataset_spec(w.dataset)["path"],
        options=lambda w: {
            k: v
            for k, v in dataset_spec(w.dataset).items()
            if k not in ("format", "path", "label")
        },
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_data/{dataset}.tsv",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/prepare_data.py"


rule train_genuine:
    input:
        data="results/data/{dataset}.npz",
    output:
        model=ML_CELL + "/models/genuine.safetensors",
        metrics=ML_CELL + "/eval/genuine.json",
    params:
        width=ML["width"],
        train=ML["train"],
        new_data_fraction=ML["new_data_fraction"],
        device=config["device"],
    resources:
        **gpu_resources(),
    log:
        ML_CELL.replace("results/", "logs/") + "/train_genuine.log",
    benchmark:
        ML_CELL.replace("results/", "results/benchmarks/") + "/train_genuine.tsv",
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    script:
        "../scripts/train_genuine.py"


rule finetune_honest:
    input:
        data="results/data/{dataset}.npz",
        genuine=ML_CELL + "/models/genuine.safetensors",
    output:
        model=ML_CELL + "/models/finetune_e{epochs}.safetensors",
        metrics=ML_CELL + "/eval/finetune_e{epochs}.json",
    params:
        train=ML["train"],
        lr_factor=ML["finetune"]["lr_factor"],
        device=config["device"],
    resources:
        **gpu_resources(),
    log:
        ML_CELL.replace("results/", "logs/") + "/finetune_e{epochs}.log",
    benchmark:
        ML_CELL.replace("results/", "results/benchmarks/") + "/finetune_e{epochs}.tsv",
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    script:
        "../scripts/finetune.py"


rule finetune_attack:
    input:
        data="results/data/{dataset}.npz",
        genuine=ML_CELL + "/models/genuine.safetensors",
    output:
        model=ML_CELL + "/models/{attack}_e{epochs}.safetensors",
        metrics=ML_CELL + "/eval/{attack}_e{epochs}.json",
    wildcard_constraints:
        attack="flip|pattern",
    params:
        train=ML["train"],
        lr_factor=ML["finetune"]["lr_factor"],
        attack=lambda w: {
            k: v
            for k, v in ML["attacks"].items()
            if k not in ("kinds", "epochs")
            and (w.attack == "pattern" or not k.startswith("pattern_"))
        },
        device=config["device"],
    resources:
        **gpu_resources(),
    log:
        ML_CELL.replace("results/", "logs/") + "/{attack}_e{epochs}.log",
    benchmark:
        ML_CELL.replace("results/", "results/benchmarks/") + "/{attack}_e{epochs}.tsv",
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    script:
        "../scripts/finetune.py"


rule dump_activations:
    input:
        data="results/data/{dataset}.npz",
        model=ML_CELL + "/models/{model}.safetensors",
    output:
        ML_CELL + "/activations/{model}.parquet",
    params:
        trigger=ML["trigger_set"],
        device=config["device"],
    resources:
        **gpu_resources(),
    log:
        ML_CELL.replace("results/", "logs/") + "/dump_{model}.log",
    benchmark:
        ML_CELL.replace("results/", "results/benchmarks/") + "/dump_{model}.tsv",
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    script:
        "../scripts/dump_activations.py"


rule fit_detector:
    input:
        data="results/data/{dataset}.npz",
        genuine=ML_CELL + "/activations/genuine.parquet",
        honest=ML_CELL
        + f"/activations/finetune_e{ML['threshold_finetune_epochs']}.parquet",
    output:
        ML_CELL + "/detector.safetensors",
    params:
        autoencoder=ML["autoencoder"],
        max_samples=ML["trigger_set"]["max_samples"],
        device=config["device"],
    resources:
        **gpu_resources(),
    log:
        ML_CELL.replace("results/", "logs/") + "/fit_detector.log",
    benchmark:
        ML_CELL.replace("results/", "results/benchmarks/") + "/fit_detector.tsv",
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    script:
        "../scripts/fit_detector.py"


rule score_model:
    input:
        detector=ML_CELL + "/detector.safetensors",
        activations=ML_CELL + "/activations/{model}.parquet",
        metrics=ML_CELL + "/eval/{model}.json",
    output:
        scores=ML_CELL + "/scores/{model}.parquet",
        summary=ML_CELL + "/scores/{model}.json",
    log:
        ML_CELL.replace("results/", "logs/") + "/score_{model}.log",
    benchmark:
        ML_CELL.replace("results/", "results/benchmarks/") + "/score_{model}.tsv",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/score_model.py"


rule collect_model_level:
    input:
        ml_cell_files("scores/{model}.json"),
    output:
        "results/model_level/detection.csv",
    log:
        "logs/model_level/collect.log",
    benchmark:
        "results/benchmarks/model_level/collect.tsv",
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/collect_model_level.py"
