# CLIP: the demo CLIP (trained in the pipeline), text features and prompt ranking.


rule train_demo_clip:
    input:
        f"{OUT}/demo_world",
    output:
        f"{OUT}/clip/demo_clip.pt",
    log:
        f"{OUT}/logs/train_demo_clip.log",
    benchmark:
        f"{OUT}/benchmarks/train_demo_clip.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: res("train_demo_clip", "threads", 8)
    resources:
        gpu=GPU,
        mem_mb=res("train_demo_clip", "mem_mb", 8000),
        runtime=res("train_demo_clip", "runtime", 60),
    params:
        settings=settings(config["demo_clip"]),
        seed=config["seed"],
        code=code_version("demo_clip", "clip_model", "demo_world"),
    script:
        "../workflow_scripts/train_demo_clip.py"


rule select_prompt:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        clip=clip_input,
    output:
        f"{OUT}/text/prompt_ranking.csv",
    log:
        f"{OUT}/logs/select_prompt.log",
    conda:
        "../envs/wsss.yaml"
    resources:
        gpu=GPU,
        mem_mb=res("select_prompt", "mem_mb", 8000),
        runtime=res("select_prompt", "runtime", 60),
    params:
        clip=settings(config["clip"]),
        dataset=settings(DATASET),
        text=settings(config["text"]),
        code=code_version("prompt_selection", "text_features", "clip_model", "classes"),
    script:
        "../workflow_scripts/select_prompt.py"


rule text_features:
    input:
        clip=clip_input,
        ranking=prompt_ranking_input,
    output:
        f"{OUT}/text/text_features.h5",
    log:
        f"{OUT}/logs/text_features.log",
    conda:
        "../envs/wsss.yaml"
    resources:
        gpu=GPU,
        mem_mb=res("text_features", "mem_mb", 4000),
        runtime=res("text_features", "runtime", 15),
    params:
        clip=settings(config["clip"]),
        dataset=settings(DATASET),
        text=settings(config["text"]),
        hdf5=settings(config["hdf5"]),
        code=code_version("text_features", "clip_model", "classes"),
    script:
        "../workflow_scripts/text_features.py"
