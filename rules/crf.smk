# CLIP-ES stage 2: dense-CRF pseudo masks with confidence, PNG export, pseudo-mask scores.


rule crf:
    input:
        caa=f"{OUT}/caa/{{split}}/{{shard}}.h5",
        manifest=f"{OUT}/manifests/{{split}}.tsv",
    output:
        f"{OUT}/crf/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/logs/crf/{{split}}/{{shard}}.log",
    benchmark:
        f"{OUT}/benchmarks/crf/{{split}}/{{shard}}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: res("crf", "threads", 2)
    resources:
        mem_mb=lambda wc, attempt: res("crf", "mem_mb", 4000) * attempt,
        runtime=res("crf", "runtime", 120),
    params:
        crf=settings({k: v for k, v in config["crf"].items() if k != "confidence_threshold"}),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_version("crf", "h5store", "stages/crf"),
    script:
        "../workflow_scripts/crf.py"


rule export_pseudo_masks:
    input:
        crf=shard_files(f"{OUT}/crf/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
    output:
        masks=directory(f"{OUT}/pseudo_masks/{PSEUDO_SPLIT}/SegmentationClassPseudo"),
        listing=f"{OUT}/pseudo_masks/{PSEUDO_SPLIT}/list.txt",
    log:
        f"{OUT}/logs/export_pseudo_masks.log",
    conda:
        "../envs/wsss.yaml"
    params:
        threshold=config["crf"]["confidence_threshold"],
        hdf5=settings(config["hdf5"]),
        code=code_version("masks_png", "palette", "stages/crf"),
    script:
        "../workflow_scripts/export_pseudo_masks.py"


rule evaluate_pseudo_masks:
    input:
        crf=shard_files(f"{OUT}/crf/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=config["splits"]["cam_eval"]),
    output:
        metrics=f"{OUT}/tables/pseudo_masks.csv",
        per_class=f"{OUT}/tables/pseudo_masks_per_class.csv",
    log:
        f"{OUT}/logs/evaluate_pseudo_masks.log",
    conda:
        "../envs/wsss.yaml"
    params:
        method=config["method"],
        splits=config["splits"]["cam_eval"],
        threshold=config["crf"]["confidence_threshold"],
        dataset=settings(DATASET),
        hdf5=settings(config["hdf5"]),
        code=code_version("metrics", "tables", "crf", "stages/evaluate"),
    script:
        "../workflow_scripts/evaluate_pseudo_masks.py"
