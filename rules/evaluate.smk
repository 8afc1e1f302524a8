# Shared tail, part 3: every instance's CAM maps, pseudo masks and segmenter scored against ground truth.
# Each evaluation writes long-format rows (method, stage, split, metric, value) under {method}/tables/.


rule evaluate_cams:
    input:
        cams=lambda wc: shard_files(f"{OUT}/{wc.method}/cams/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=CAM_EVAL_SPLITS),
        oracle_threshold=oracle_threshold_input,
    output:
        metrics=f"{OUT}/{{method}}/tables/cams.csv",
        per_class=f"{OUT}/{{method}}/tables/cams_per_class.csv",
    log:
        f"{OUT}/{{method}}/logs/evaluate_cams.log",
    conda:
        "../envs/wsss.yaml"
    params:
        # CLIP-ES recipes score (1 - max)^alpha backgrounds; label-unary recipes (SemPLeS) their fixed threshold
        alphas=lambda wc: [] if label_unary(wc.method) else config["evaluation"]["bg_alphas"],
        thresholds=lambda wc: (
            [crf_config(METHODS[wc.method]["pseudo_masks"]["crf"]).bg_threshold]
            if label_unary(wc.method)
            else []
        ),
        dataset=settings(DATASET),
        hdf5=settings(config["hdf5"]),
        code=code_digest("evaluate_cams.py"),
    script:
        "../workflow_scripts/evaluate_cams.py"


rule evaluate_pseudo_masks:
    input:
        crf=lambda wc: refined_files(wc.method),
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=CAM_EVAL_SPLITS),
    output:
        metrics=f"{OUT}/{{method}}/tables/pseudo_masks.csv",
        per_class=f"{OUT}/{{method}}/tables/pseudo_masks_per_class.csv",
    log:
        f"{OUT}/{{method}}/logs/evaluate_pseudo_masks.log",
    conda:
        "../envs/wsss.yaml"
    params:
        pseudo_masks=method_settings("pseudo_masks"),
        dataset=settings(DATASET),
        hdf5=settings(config["hdf5"]),
        code=code_digest("evaluate_pseudo_masks.py"),
    script:
        "../workflow_scripts/evaluate_pseudo_masks.py"


rule evaluate_segmenter:
    input:
        predictions=lambda wc: shard_files(
            f"{OUT}/{wc.method}/predictions/{{split}}/{{shard}}.h5", EVAL_SPLIT
        ),
        manifest=f"{OUT}/manifests/{EVAL_SPLIT}.tsv",
    output:
        metrics=f"{OUT}/{{method}}/tables/segmenter.csv",
        per_class=f"{OUT}/{{method}}/tables/segmenter_per_class.csv",
        per_class_md=f"{OUT}/{{method}}/tables/segmenter_per_class.md",
    log:
        f"{OUT}/{{method}}/logs/evaluate_segmenter.log",
    wildcard_constraints:
        method=one_of(SEGMENTER_METHODS if EVAL_SPLIT else []),
    conda:
        "../envs/wsss.yaml"
    params:
        split=EVAL_SPLIT,
        dataset=settings(DATASET),
        hdf5=settings(config["hdf5"]),
        code=code_digest("evaluate_segmenter.py"),
    script:
        "../workflow_scripts/evaluate_segmenter.py"


# gt_select instances only (an oracle, never the default): the background threshold chosen on ground truth.
rule select_oracle_threshold:
    input:
        cams=lambda wc: shard_files(f"{OUT}/{wc.method}/cams/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=CAM_EVAL_SPLITS),
    output:
        f"{OUT}/{{method}}/tables/oracle_threshold.json",
    log:
        f"{OUT}/{{method}}/logs/select_oracle_threshold.log",
    wildcard_constraints:
        method=one_of(ORACLE_METHODS),
    conda:
        "../envs/wsss.yaml"
    params:
        dataset=settings(DATASET),
        hdf5=settings(config["hdf5"]),
        code=code_digest("select_oracle_threshold.py"),
    script:
        "../workflow_scripts/select_oracle_threshold.py"
