# Data: the generated demo world and one manifest table per split.


rule generate_demo_world:
    output:
        directory(f"{OUT}/demo_world"),
    log:
        f"{OUT}/logs/generate_demo_world.log",
    benchmark:
        f"{OUT}/benchmarks/generate_demo_world.tsv"
    conda:
        "../envs/wsss.yaml"
    params:
        world=settings(config["demo_world"]),
        code=code_digest("generate_demo_world.py"),
    script:
        "../workflow_scripts/generate_demo_world.py"


rule manifest:
    input:
        dataset_input,
    output:
        f"{OUT}/manifests/{{split}}.tsv",
    log:
        f"{OUT}/logs/manifest/{{split}}.log",
    benchmark:
        f"{OUT}/benchmarks/manifest/{{split}}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 4  # decoding every image once; capped by --cores
    params:
        dataset=settings(DATASET),
        on_unlabeled=config["labels"]["on_unlabeled"],
        expected_rows=lambda wc: support.count_images(config, DATASET, wc.split),
        code=code_digest("manifest.py"),
    script:
        "../workflow_scripts/manifest.py"
