# CLIP, shared by every method: the demo CLIP (trained in the pipeline), text features and prompt ranking.
# Text features live under text/<key>/, one folder per distinct (clip, text) setting of the instances.


rule train_demo_clip:
    input:
        world=f"{OUT}/demo_world",
        checked=checked_manifests,
    output:
        model=DEMO_CLIP,
        history=f"{OUT}/clip/loss_history.csv",
    log:
        f"{OUT}/logs/train_demo_clip.log",
    benchmark:
        f"{OUT}/benchmarks/train_demo_clip.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: threads_of("train_demo_clip", 4, runs_alone=True)
    resources:
        gpu=GPU,
        mem_mb=res("train_demo_clip", "mem_mb", 16000),
        runtime=res("train_demo_clip", "runtime", 60),
    params:
        settings=settings(config["demo_clip"]),
        seed=config["seed"],
        code=code_digest("train_demo_clip.py"),
    script:
        "../workflow_scripts/train_demo_clip.py"


rule select_prompt:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        clip=clip_input,
    output:
        f"{OUT}/text/{{text_key}}/prompt_ranking.csv",
    log:
        f"{OUT}/logs/select_prompt/{{text_key}}.log",
    conda:
        "../envs/wsss.yaml"
    threads: threads_of("select_prompt", 2)
    resources:
        gpu=GPU,
        mem_mb=res("select_prompt", "mem_mb", 16000),
        runtime=res("select_prompt", "runtime", 60),
    params:
        clip=settings(config["clip"]),
        dataset=settings(DATASET),
        text=text_settings,
        code=code_digest("select_prompt.py"),
    script:
        "../workflow_scripts/select_prompt.py"


rule text_features:
    input:
        clip=clip_input,
        ranking=prompt_ranking_input,
        checked=checked_manifests,
    output:
        f"{OUT}/text/{{text_key}}/text_features.h5",
    log:
        f"{OUT}/logs/text_features/{{text_key}}.log",
    conda:
        "../envs/wsss.yaml"
    threads: threads_of("text_features", 2)
    resources:
        gpu=GPU,
        mem_mb=res("text_features", "mem_mb", 16000),
        runtime=res("text_features", "runtime", 30),
    params:
        clip=settings(config["clip"]),
        dataset=settings(DATASET),
        text=text_settings,
        hdf5=settings(config["hdf5"]),
        code=code_digest("text_features.py"),
    script:
        "../workflow_scripts/text_features.py"
