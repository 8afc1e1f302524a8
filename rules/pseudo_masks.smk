# Shared tail, part 1: a method's CAM shards become dense-CRF pseudo masks with confidence, by the
# instance's own recipe (methods.<name>.pseudo_masks), and are exported as VOC-palette PNGs.


rule crf:
    input:
        cams=f"{OUT}/{{method}}/cams/{{split}}/{{shard}}.h5",
        manifest=f"{OUT}/manifests/{{split}}.tsv",
        oracle_threshold=oracle_threshold_input,
    output:
        f"{OUT}/{{method}}/crf/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/{{method}}/logs/crf/{{split}}/{{shard}}.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/crf/{{split}}/{{shard}}.tsv"
    wildcard_constraints:
        method=one_of({name for name in METHODS if refiner_of(name) == "crf"}),
    # SLURM bundles the per-shard refiners (profiles/slurm group-components)
    group:
        "refined_shards"
    conda:
        "../envs/wsss.yaml"
    threads: threads_of("crf", 2)
    resources:
        mem_mb=lambda wc, attempt: res("crf", "mem_mb", 3000) * attempt,
        runtime=res("crf", "runtime", 20),
    params:
        # the confidence threshold is applied downstream, so changing it does not rerun the CRF
        crf=lambda wc: settings(METHODS[wc.method]["pseudo_masks"]["crf"]),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_digest("crf.py"),
    script:
        "../workflow_scripts/crf.py"


# Instances with pseudo_masks.refiner par: pixel-adaptive refinement instead of the CRF, same layout.
rule par:
    input:
        cams=f"{OUT}/{{method}}/cams/{{split}}/{{shard}}.h5",
        manifest=f"{OUT}/manifests/{{split}}.tsv",
    output:
        f"{OUT}/{{method}}/par/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/{{method}}/logs/par/{{split}}/{{shard}}.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/par/{{split}}/{{shard}}.tsv"
    wildcard_constraints:
        method=one_of({name for name in METHODS if refiner_of(name) == "par"}),
    # like the CRF
    group:
        "refined_shards"
    conda:
        "../envs/wsss.yaml"
    threads: threads_of("par", 2)
    resources:
        mem_mb=lambda wc, attempt: res("par", "mem_mb", 3000) * attempt,
        runtime=res("par", "runtime", 20),
    params:
        # the confidence threshold is applied downstream, so changing it does not rerun PAR
        pseudo_masks=lambda wc: settings(
            {
                key: value
                for key, value in METHODS[wc.method]["pseudo_masks"].items()
                if key in ("par", "crf")
            }
        ),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_digest("par.py"),
    script:
        "../workflow_scripts/par.py"


rule export_pseudo_masks:
    input:
        crf=lambda wc: refined_files(wc.method),
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
    output:
        masks=directory(f"{OUT}/{{method}}/pseudo_masks/{PSEUDO_SPLIT}/SegmentationClassPseudo"),
        listing=f"{OUT}/{{method}}/pseudo_masks/{PSEUDO_SPLIT}/list.txt",
    log:
        f"{OUT}/{{method}}/logs/export_pseudo_masks.log",
    conda:
        "../envs/wsss.yaml"
    params:
        pseudo_masks=method_settings("pseudo_masks"),
        hdf5=settings(config["hdf5"]),
        code=code_digest("export_pseudo_masks.py"),
    script:
        "../workflow_scripts/export_pseudo_masks.py"
