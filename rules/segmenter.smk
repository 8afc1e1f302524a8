# Shared tail, part 2: DeepLabV2 trained on an instance's confidence-masked pseudo masks, then predicted
# shard by shard on the evaluation split, and exported as palette PNGs (VOC test-server format).
# Instances with `segmenter: false` stop before this.


rule train_segmenter:
    input:
        crf=lambda wc: refined_files(wc.method),
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
    output:
        model=f"{OUT}/{{method}}/segmenter/model.pt",
        history=f"{OUT}/{{method}}/segmenter/loss_history.csv",
    log:
        f"{OUT}/{{method}}/logs/train_segmenter.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/train_segmenter.tsv"
    wildcard_constraints:
        method=one_of(SEGMENTER_METHODS),
    conda:
        "../envs/wsss.yaml"
    threads: threads_of("train_segmenter", 8)
    resources:
        gpu=GPU,
        mem_mb=res("train_segmenter", "mem_mb", 64000),
        runtime=res("train_segmenter", "runtime", 1440),
    params:
        train=settings(config["segmenter"]["train"]),
        pseudo_masks=method_settings("pseudo_masks"),
        n_classes=len(DATASET_CLASSES) + 1,
        seed=config["seed"],
        # Checkpoints live beside the model but are not outputs, so a rerun after a crash resumes.
        checkpoint_dir=lambda wc: f"{OUT}/{wc.method}/segmenter/checkpoints",
        hdf5=settings(config["hdf5"]),
        code=code_digest("train_segmenter.py"),
    script:
        "../workflow_scripts/train_segmenter.py"


rule predict:
    input:
        model=f"{OUT}/{{method}}/segmenter/model.pt",
        manifest=f"{OUT}/manifests/{{split}}.tsv",
    output:
        f"{OUT}/{{method}}/predictions/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/{{method}}/logs/predict/{{split}}/{{shard}}.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/predict/{{split}}/{{shard}}.tsv"
    wildcard_constraints:
        method=one_of(SEGMENTER_METHODS),
    conda:
        "../envs/wsss.yaml"
    threads: threads_of("predict", 8)
    resources:
        gpu=GPU,
        mem_mb=res("predict", "mem_mb", 32000),
        runtime=res("predict", "runtime", 240),
    params:
        predict=settings(config["segmenter"]["predict"]),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_digest("predict.py"),
    script:
        "../workflow_scripts/predict.py"


rule export_predictions:
    input:
        predictions=lambda wc: shard_files(
            f"{OUT}/{wc.method}/predictions/{{split}}/{{shard}}.h5", wc.split
        ),
        manifest=f"{OUT}/manifests/{{split}}.tsv",
    output:
        masks=directory(f"{OUT}/{{method}}/predicted_masks/{{split}}/SegmentationClassPred"),
        listing=f"{OUT}/{{method}}/predicted_masks/{{split}}/list.txt",
    log:
        f"{OUT}/{{method}}/logs/export_predictions/{{split}}.log",
    wildcard_constraints:
        method=one_of(SEGMENTER_METHODS),
    conda:
        "../envs/wsss.yaml"
    params:
        hdf5=settings(config["hdf5"]),
        code=code_digest("export_predictions.py"),
    script:
        "../workflow_scripts/export_predictions.py"
