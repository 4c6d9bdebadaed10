# Model-level detection (El Moadine et al.): train M, fine-tune it honestly and with attacks,
# dump penultimate activations on the trigger set, fit the auto-encoder, score every model.


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
    script:
        "../scripts/prepare_data.py"


rule train_genuine:
    input:
        data="results/data/{dataset}.npz",
    output:
        model=ml_path("models/genuine.safetensors"),
        metrics=ml_path("eval/genuine.json"),
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
        device=config["device"],
    script:
        "../scripts/train_genuine.py"


rule finetune_honest:
    input:
        data="results/data/{dataset}.npz",
        genuine=ml_path("models/genuine.safetensors"),
    output:
        model=ml_path("models/finetune_e{epochs}.safetensors"),
        metrics=ml_path("eval/finetune_e{epochs}.json"),
    log:
        ml_path("finetune_e{epochs}.log", "logs"),
    benchmark:
        ml_path("finetune_e{epochs}.tsv", "results/benchmarks")
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
    params:
        train=ML["train"],
        lr_factor=ML["finetune"]["lr_factor"],
        device=config["device"],
    script:
        "../scripts/finetune.py"


rule finetune_attack:
    input:
        data="results/data/{dataset}.npz",
        genuine=ml_path("models/genuine.safetensors"),
    output:
        model=ml_path("models/{attack}_e{epochs}.safetensors"),
        metrics=ml_path("eval/{attack}_e{epochs}.json"),
    log:
        ml_path("{attack}_e{epochs}.log", "logs"),
    benchmark:
        ml_path("{attack}_e{epochs}.tsv", "results/benchmarks")
    wildcard_constraints:
        attack="flip|pattern",
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
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
    script:
        "../scripts/finetune.py"


rule dump_activations:
    input:
        data="results/data/{dataset}.npz",
        model=ml_path("models/{model}.safetensors"),
    output:
        ml_path("activations/{model}.parquet"),
    log:
        ml_path("dump_{model}.log", "logs"),
    benchmark:
        ml_path("dump_{model}.tsv", "results/benchmarks")
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
    params:
        trigger=ML["trigger_set"],
        device=config["device"],
    script:
        "../scripts/dump_activations.py"


rule fit_detector:
    input:
        data="results/data/{dataset}.npz",
        genuine=ml_path("activations/genuine.parquet"),
        honest=ml_path(
            f"activations/finetune_e{ML['threshold_finetune_epochs']}.parquet"
        ),
    output:
        ml_path("detector.safetensors"),
    log:
        ml_path("fit_detector.log", "logs"),
    benchmark:
        ml_path("fit_detector.tsv", "results/benchmarks")
    conda:
        "../envs/gpu.yaml"
    container:
        config["containers"]["gpu"]
    resources:
        **gpu_resources(),
    params:
        autoencoder=ML["autoencoder"],
        max_samples=ML["trigger_set"]["max_samples"],
        device=config["device"],
    script:
        "../scripts/fit_detector.py"


rule score_model:
    input:
        detector=ml_path("detector.safetensors"),
        activations=ml_path("activations/{model}.parquet"),
        metrics=ml_path("eval/{model}.json"),
    output:
        scores=ml_path("scores/{model}.parquet"),
        summary=ml_path("scores/{model}.json"),
    log:
        ml_path("score_{model}.log", "logs"),
    benchmark:
        ml_path("score_{model}.tsv", "results/benchmarks")
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
        "results/benchmarks/model_level/collect.tsv"
    conda:
        "../envs/cpu.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../scripts/collect_model_level.py"
