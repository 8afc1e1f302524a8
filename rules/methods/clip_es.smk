# Method kind clip_es (CLIP-ES, CVPR 2023): softmax-GradCAM per shard, then class-aware attention affinity
# (CAA) as its own cached stage. The CAA rule writes the method contract: {method}/cams/{split}/{shard}.h5.

KEEPS_AFFINITY = {
    name for name in instances_of(METHODS, "clip_es") if METHODS[name]["caa"]["keep_affinity"]
}


rule clip_es_gradcam:
    input:
        manifest=f"{OUT}/manifests/{{split}}.tsv",
        text=text_features_of,
        clip=clip_input,
    output:
        cams=f"{OUT}/{{method}}/gradcam/{{split}}/{{shard}}.h5",
        affinity=temp(f"{OUT}/{{method}}/affinity/{{split}}/{{shard}}.h5"),
    log:
        f"{OUT}/{{method}}/logs/gradcam/{{split}}/{{shard}}.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/gradcam/{{split}}/{{shard}}.tsv"
    wildcard_constraints:
        method=one_of(set(instances_of(METHODS, "clip_es")) - KEEPS_AFFINITY),
    conda:
        "../../envs/wsss.yaml"
    threads: threads_of("clip_es_gradcam", 8)
    resources:
        gpu=GPU,
        mem_mb=lambda wc, attempt: res("clip_es_gradcam", "mem_mb", 16000) * attempt,
        runtime=res("clip_es_gradcam", "runtime", 120),
    params:
        clip=settings(config["clip"]),
        cam=method_settings("cam"),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_digest("clip_es_gradcam.py"),
    script:
        "../../workflow_scripts/clip_es_gradcam.py"


# Instances with caa.keep_affinity keep the affinity files, so that changing a CAA setting reruns CAA only.
use rule clip_es_gradcam as clip_es_gradcam_keep_affinity with:
    output:
        cams=f"{OUT}/{{method}}/gradcam/{{split}}/{{shard}}.h5",
        affinity=f"{OUT}/{{method}}/affinity/{{split}}/{{shard}}.h5",
    wildcard_constraints:
        method=one_of(KEEPS_AFFINITY),


rule clip_es_caa:
    input:
        cams=f"{OUT}/{{method}}/gradcam/{{split}}/{{shard}}.h5",
        affinity=f"{OUT}/{{method}}/affinity/{{split}}/{{shard}}.h5",
    output:
        f"{OUT}/{{method}}/cams/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/{{method}}/logs/caa/{{split}}/{{shard}}.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/caa/{{split}}/{{shard}}.tsv"
    wildcard_constraints:
        method=one_of(instances_of(METHODS, "clip_es")),
    # per-shard CPU step: SLURM bundles these (profiles/slurm group-components)
    group:
        "cam_shards"
    conda:
        "../../envs/wsss.yaml"
    threads: threads_of("clip_es_caa", 1)  # many shards side by side (50 per SLURM group job)
    resources:
        mem_mb=res("clip_es_caa", "mem_mb", 4000),
        runtime=res("clip_es_caa", "runtime", 20),
    params:
        caa=method_settings("caa"),
        hdf5=settings(config["hdf5"]),
        code=code_digest("clip_es_caa.py"),
    script:
        "../../workflow_scripts/clip_es_caa.py"
