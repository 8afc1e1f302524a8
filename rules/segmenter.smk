# Segmenter: DeepLabV2 trained on the confidence-masked pseudo masks, predicted and scored on a split.


rule train_segmenter:
    input:
        crf=shard_files(f"{OUT}/crf/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
    output:
        f"{OUT}/segmenter/model.pt",
    log:
        f"{OUT}/logs/train_segmenter.log",
    benchmark:
        f"{OUT}/benchmarks/train_segmenter.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: res("train_segmenter", "threads", 8)
    resources:
        gpu=GPU,
        mem_mb=res("train_segmenter", "mem_mb", 16000),
        runtime=res("train_segmenter", "runtime", 1440),
    params:
        segmenter=settings(
            {k: v for k, v in config["segmenter"].items() if not k.startswith("test_")}
        ),
        n_classes=len(DATASET_CLASSES) + 1,
        threshold=config["crf"]["confidence_threshold"],
        seed=config["seed"],
        # Checkpoints live beside the model but are not outputs, so a rerun after a crash resumes.
        checkpoint_dir=f"{OUT}/segmenter/checkpoints",
        hdf5=settings(config["hdf5"]),
        code=code_version(
            "stages/segmenter", "segmenter/deeplab", "segmenter/train", "segmenter/losses"
        ),
    script:
        "../workflow_scripts/train_segmenter.py"


rule predict:
    input:
        model=f"{OUT}/segmenter/model.pt",
        manifest=f"{OUT}/manifests/{{split}}.tsv",
    output:
        f"{OUT}/predictions/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/logs/predict/{{split}}/{{shard}}.log",
    conda:
        "../envs/wsss.yaml"
    threads: res("predict", "threads", 2)
    resources:
        gpu=GPU,
        mem_mb=res("predict", "mem_mb", 8000),
        runtime=res("predict", "runtime", 120),
    params:
        segmenter=settings(config["segmenter"]),
        crf=settings(config["crf"]),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_version("stages/segmenter", "segmenter/predict", "crf"),
    script:
        "../workflow_scripts/predict.py"


rule evaluate_segmenter:
    input:
        predictions=(
            shard_files(f"{OUT}/predictions/{{split}}/{{shard}}.h5", EVAL_SPLIT)
            if EVAL_SPLIT
            else []
        ),
        manifest=f"{OUT}/manifests/{EVAL_SPLIT}.tsv",
    output:
        metrics=f"{OUT}/tables/segmenter.csv",
        per_class=f"{OUT}/tables/segmenter_per_class.csv",
        per_class_md=f"{OUT}/tables/segmenter_per_class.md",
    log:
        f"{OUT}/logs/evaluate_segmenter.log",
    conda:
        "../envs/wsss.yaml"
    params:
        method=config["method"],
        split=EVAL_SPLIT,
        dataset=settings(DATASET),
        hdf5=settings(config["hdf5"]),
        code=code_version("metrics", "tables", "stages/evaluate"),
    script:
        "../workflow_scripts/evaluate_segmenter.py"
