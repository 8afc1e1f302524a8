# CLIP-ES stage 1: softmax-GradCAM per shard, CAA refinement as its own cached stage, CAM scores.


rule cams:
    input:
        manifest=f"{OUT}/manifests/{{split}}.tsv",
        text=f"{OUT}/text/text_features.h5",
        clip=clip_input,
    output:
        cams=f"{OUT}/cams/{{split}}/{{shard}}.h5",
        affinity=(
            f"{OUT}/affinity/{{split}}/{{shard}}.h5"
            if config["caa"]["keep_affinity"]
            else temp(f"{OUT}/affinity/{{split}}/{{shard}}.h5")
        ),
    log:
        f"{OUT}/logs/cams/{{split}}/{{shard}}.log",
    benchmark:
        f"{OUT}/benchmarks/cams/{{split}}/{{shard}}.tsv"
    conda:
        "../envs/wsss.yaml"
    resources:
        gpu=GPU,
        mem_mb=lambda wc, attempt: res("cams", "mem_mb", 8000) * attempt,
        runtime=res("cams", "runtime", 120),
    params:
        clip=settings(config["clip"]),
        cam=settings(config["cam"]),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_version("gradcam", "clip_model", "h5store", "stages/cams", "stages/devices"),
    script:
        "../workflow_scripts/cams.py"


rule caa:
    input:
        cams=f"{OUT}/cams/{{split}}/{{shard}}.h5",
        affinity=f"{OUT}/affinity/{{split}}/{{shard}}.h5",
    output:
        f"{OUT}/caa/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/logs/caa/{{split}}/{{shard}}.log",
    conda:
        "../envs/wsss.yaml"
    resources:
        mem_mb=res("caa", "mem_mb", 2000),
        runtime=res("caa", "runtime", 30),
    params:
        caa=settings(config["caa"]),
        hdf5=settings(config["hdf5"]),
        code=code_version("affinity", "h5store", "stages/cams"),
    script:
        "../workflow_scripts/caa.py"


rule evaluate_cams:
    input:
        cams=shard_files(f"{OUT}/cams/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        caa=shard_files(f"{OUT}/caa/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=config["splits"]["cam_eval"]),
    output:
        metrics=f"{OUT}/tables/cams.csv",
        per_class=f"{OUT}/tables/cams_per_class.csv",
    log:
        f"{OUT}/logs/evaluate_cams.log",
    conda:
        "../envs/wsss.yaml"
    params:
        method=config["method"],
        splits=config["splits"]["cam_eval"],
        alphas=config["evaluation"]["bg_alphas"],
        dataset=settings(DATASET),
        hdf5=settings(config["hdf5"]),
        code=code_version("metrics", "tables", "stages/evaluate"),
    script:
        "../workflow_scripts/evaluate_cams.py"
