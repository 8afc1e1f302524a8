# Method kind semples (SemPLeS, WACV 2025): WeakTr phase 1, then stages a (match), b (prompts) and
# c (refine) against a frozen CLIP critic, then multi-scale CAMs into the method contract
# {method}/cams/{split}/{shard}.h5. Training stages live under training/semples/<stage>/<key>/, where
# the key digests the settings up to that stage, so instances that differ only later share them.


rule semples_phase1:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        checked=checked_manifests,
        deit=deit_input,
        clip=critic_input("phase1"),
    output:
        f"{SEMPLES_TRAINING}/phase1/{{key}}/model.pt",
    log:
        f"{SEMPLES_TRAINING}/phase1/{{key}}/train.log",
    benchmark:
        f"{SEMPLES_TRAINING}/phase1/{{key}}/benchmark.tsv"
    wildcard_constraints:
        key=stage_key_pattern("phase1"),
    priority: 1  # the longest chain of a run: started first, shorter ones fill the other cores
    conda:
        "../../envs/wsss.yaml"
    threads: res("semples_phase1", "threads", 8)
    resources:
        gpu=GPU,
        mem_mb=res("semples_phase1", "mem_mb", 16000),
        runtime=res("semples_phase1", "runtime", 720),
    params:
        method=semples_params("phase1"),
        n_classes=len(DATASET_CLASSES),
        tokens=semples_tokens("phase1"),
        # Checkpoints sit beside the model but are not outputs, so a rerun after a kill resumes.
        checkpoint_dir=lambda wc: f"{SEMPLES_TRAINING}/phase1/{wc.key}/checkpoints",
        code=code_digest("semples_phase1.py"),
    script:
        "../../workflow_scripts/semples_phase1.py"


rule semples_match:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        phase1=lambda wc: semples_model("phase1", semples_instance("match", wc.key)[0]),
        clip=critic_input("match"),
    output:
        f"{SEMPLES_TRAINING}/match/{{key}}/model.pt",
    log:
        f"{SEMPLES_TRAINING}/match/{{key}}/train.log",
    benchmark:
        f"{SEMPLES_TRAINING}/match/{{key}}/benchmark.tsv"
    wildcard_constraints:
        key=stage_key_pattern("match"),
    priority: 1
    conda:
        "../../envs/wsss.yaml"
    threads: res("semples_match", "threads", 8)
    resources:
        gpu=GPU,
        mem_mb=res("semples_match", "mem_mb", 24000),
        runtime=res("semples_match", "runtime", 720),
    params:
        method=semples_params("match"),
        class_names=semples_class_names("match"),
        imported_phase1=semples_imported_phase1("match"),
        checkpoint_dir=lambda wc: f"{SEMPLES_TRAINING}/match/{wc.key}/checkpoints",
        code=code_digest("semples_match.py"),
    script:
        "../../workflow_scripts/semples_match.py"


rule semples_prompts:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        match=lambda wc: semples_model("match", semples_instance("prompts", wc.key)[0]),
        clip=critic_input("prompts"),
    output:
        prompts=f"{SEMPLES_TRAINING}/prompts/{{key}}/prompts.pt",
        nearest_words=f"{SEMPLES_TRAINING}/prompts/{{key}}/nearest_words.csv",
    log:
        f"{SEMPLES_TRAINING}/prompts/{{key}}/train.log",
    benchmark:
        f"{SEMPLES_TRAINING}/prompts/{{key}}/benchmark.tsv"
    wildcard_constraints:
        key=stage_key_pattern("prompts"),
    priority: 1
    conda:
        "../../envs/wsss.yaml"
    threads: res("semples_prompts", "threads", 8)
    resources:
        gpu=GPU,
        mem_mb=res("semples_prompts", "mem_mb", 16000),
        runtime=res("semples_prompts", "runtime", 360),
    params:
        method=semples_params("prompts"),
        class_names=semples_class_names("prompts"),
        checkpoint_dir=lambda wc: f"{SEMPLES_TRAINING}/prompts/{wc.key}/checkpoints",
        code=code_digest("semples_prompts.py"),
    script:
        "../../workflow_scripts/semples_prompts.py"


rule semples_refine:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        # stage c restarts from phase 1 (trained, or imported by phase1.checkpoint), not from stage a (spec §5.3)
        phase1=lambda wc: semples_model("phase1", semples_instance("refine", wc.key)[0]),
        prompts=lambda wc: (
            f"{SEMPLES_TRAINING}/prompts/"
            f"{SEMPLES_KEYS[semples_instance('refine', wc.key)[0]]['prompts']}/prompts.pt"
        ),
        clip=critic_input("refine"),
    output:
        f"{SEMPLES_TRAINING}/refine/{{key}}/model.pt",
    log:
        f"{SEMPLES_TRAINING}/refine/{{key}}/train.log",
    benchmark:
        f"{SEMPLES_TRAINING}/refine/{{key}}/benchmark.tsv"
    wildcard_constraints:
        key=stage_key_pattern("refine"),
    priority: 1
    conda:
        "../../envs/wsss.yaml"
    threads: res("semples_refine", "threads", 8)
    resources:
        gpu=GPU,
        mem_mb=res("semples_refine", "mem_mb", 24000),
        runtime=res("semples_refine", "runtime", 720),
    params:
        method=semples_params("refine"),
        class_names=semples_class_names("refine"),
        imported_phase1=semples_imported_phase1("refine"),
        checkpoint_dir=lambda wc: f"{SEMPLES_TRAINING}/refine/{wc.key}/checkpoints",
        code=code_digest("semples_refine.py"),
    script:
        "../../workflow_scripts/semples_refine.py"


rule semples_cams:
    input:
        manifest=f"{OUT}/manifests/{{split}}.tsv",
        model=lambda wc: semples_model(final_stage(METHODS[wc.method]), wc.method),
    output:
        f"{OUT}/{{method}}/cams/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/{{method}}/logs/cams/{{split}}/{{shard}}.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/cams/{{split}}/{{shard}}.tsv"
    wildcard_constraints:
        method=one_of(instances_of(METHODS, "semples")),
    conda:
        "../../envs/wsss.yaml"
    threads: res("semples_cams", "threads", 4)
    resources:
        gpu=GPU,
        mem_mb=res("semples_cams", "mem_mb", 8000),
        runtime=res("semples_cams", "runtime", 120),
    params:
        cam=method_settings("cam"),
        precision=method_settings("precision"),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_digest("semples_cams.py"),
    script:
        "../../workflow_scripts/semples_cams.py"
