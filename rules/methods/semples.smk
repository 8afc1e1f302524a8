# Method kind semples (SemPLeS, WACV 2025): WeakTr phase 1, then stages a (match), b (prompts) and
# c (refine) against a frozen CLIP critic, then multi-scale CAMs into the method contract
# {method}/cams/{split}/{shard}.h5. Training stages live under training/semples/<stage>/<key>/, where
# the key digests the settings up to that stage, so instances that differ only later share them.

from wsss.methods.semples import final_stage
from wsss.methods.semples.training_plan import TrainingPlan

SEMPLES = TrainingPlan.build(
    {name: METHODS[name] for name in instances_of(METHODS, "semples")},
    root=f"{OUT}/training/semples",
    split=PSEUDO_SPLIT,
    dataset_kind=DATASET["kind"],
    classes=DATASET_CLASSES,
)
SEMPLES_TRAINING = SEMPLES.root


rule semples_phase1:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        checked=checked_manifests,
        deit=lambda wc: SEMPLES.deit_files(wc.key),
        clip=lambda wc: SEMPLES.critic_files("phase1", wc.key, DEMO_CLIP),
    output:
        f"{SEMPLES_TRAINING}/phase1/{{key}}/model.pt",
    log:
        f"{SEMPLES_TRAINING}/phase1/{{key}}/train.log",
    benchmark:
        f"{SEMPLES_TRAINING}/phase1/{{key}}/benchmark.tsv"
    wildcard_constraints:
        key=one_of(SEMPLES.stage_keys("phase1")),
    priority: 1  # the longest chain of a run: started first, shorter ones fill the other cores
    conda:
        "../../envs/wsss.yaml"
    threads: threads_of("semples_phase1", 8)
    resources:
        gpu=GPU,
        mem_mb=res("semples_phase1", "mem_mb", 32000),
        runtime=res("semples_phase1", "runtime", 1440),
    params:
        method=lambda wc: settings(SEMPLES.settings("phase1", wc.key)),
        n_classes=len(DATASET_CLASSES),
        tokens=lambda wc: SEMPLES.class_tokens("phase1", wc.key),
        # Checkpoints sit beside the model but are not outputs, so a rerun after a kill resumes.
        checkpoint_dir=lambda wc: f"{SEMPLES_TRAINING}/phase1/{wc.key}/checkpoints",
        code=code_digest("semples_phase1.py"),
    script:
        "../../workflow_scripts/semples_phase1.py"


rule semples_match:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        phase1=lambda wc: SEMPLES.start("match", wc.key, "phase1"),
        clip=lambda wc: SEMPLES.critic_files("match", wc.key, DEMO_CLIP),
    output:
        f"{SEMPLES_TRAINING}/match/{{key}}/model.pt",
    log:
        f"{SEMPLES_TRAINING}/match/{{key}}/train.log",
    benchmark:
        f"{SEMPLES_TRAINING}/match/{{key}}/benchmark.tsv"
    wildcard_constraints:
        key=one_of(SEMPLES.stage_keys("match")),
    priority: 1
    conda:
        "../../envs/wsss.yaml"
    threads: threads_of("semples_match", 8)
    resources:
        gpu=GPU,
        mem_mb=res("semples_match", "mem_mb", 32000),
        runtime=res("semples_match", "runtime", 1440),
    params:
        method=lambda wc: settings(SEMPLES.settings("match", wc.key)),
        class_names=lambda wc: SEMPLES.class_names("match", wc.key),
        imported_phase1=lambda wc: settings(SEMPLES.imported_generator("match", wc.key)),
        checkpoint_dir=lambda wc: f"{SEMPLES_TRAINING}/match/{wc.key}/checkpoints",
        code=code_digest("semples_match.py"),
    script:
        "../../workflow_scripts/semples_match.py"


rule semples_prompts:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        match=lambda wc: SEMPLES.start("prompts", wc.key, "match"),
        clip=lambda wc: SEMPLES.critic_files("prompts", wc.key, DEMO_CLIP),
    output:
        prompts=f"{SEMPLES_TRAINING}/prompts/{{key}}/prompts.pt",
        nearest_words=f"{SEMPLES_TRAINING}/prompts/{{key}}/nearest_words.csv",
    log:
        f"{SEMPLES_TRAINING}/prompts/{{key}}/train.log",
    benchmark:
        f"{SEMPLES_TRAINING}/prompts/{{key}}/benchmark.tsv"
    wildcard_constraints:
        key=one_of(SEMPLES.stage_keys("prompts")),
    priority: 1
    conda:
        "../../envs/wsss.yaml"
    threads: threads_of("semples_prompts", 8)
    resources:
        gpu=GPU,
        mem_mb=res("semples_prompts", "mem_mb", 32000),
        runtime=res("semples_prompts", "runtime", 1440),
    params:
        method=lambda wc: settings(SEMPLES.settings("prompts", wc.key)),
        class_names=lambda wc: SEMPLES.class_names("prompts", wc.key),
        checkpoint_dir=lambda wc: f"{SEMPLES_TRAINING}/prompts/{wc.key}/checkpoints",
        code=code_digest("semples_prompts.py"),
    script:
        "../../workflow_scripts/semples_prompts.py"


rule semples_refine:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        # stage c restarts from phase 1 (trained, or imported by phase1.checkpoint), not from stage a (spec §5.3)
        phase1=lambda wc: SEMPLES.start("refine", wc.key, "phase1"),
        prompts=lambda wc: SEMPLES.prompts(wc.key),
        clip=lambda wc: SEMPLES.critic_files("refine", wc.key, DEMO_CLIP),
    output:
        f"{SEMPLES_TRAINING}/refine/{{key}}/model.pt",
    log:
        f"{SEMPLES_TRAINING}/refine/{{key}}/train.log",
    benchmark:
        f"{SEMPLES_TRAINING}/refine/{{key}}/benchmark.tsv"
    wildcard_constraints:
        key=one_of(SEMPLES.stage_keys("refine")),
    priority: 1
    conda:
        "../../envs/wsss.yaml"
    threads: threads_of("semples_refine", 8)
    resources:
        gpu=GPU,
        mem_mb=res("semples_refine", "mem_mb", 32000),
        runtime=res("semples_refine", "runtime", 1440),
    params:
        method=lambda wc: settings(SEMPLES.settings("refine", wc.key)),
        class_names=lambda wc: SEMPLES.class_names("refine", wc.key),
        imported_phase1=lambda wc: settings(SEMPLES.imported_generator("refine", wc.key)),
        checkpoint_dir=lambda wc: f"{SEMPLES_TRAINING}/refine/{wc.key}/checkpoints",
        code=code_digest("semples_refine.py"),
    script:
        "../../workflow_scripts/semples_refine.py"


rule semples_cams:
    input:
        manifest=f"{OUT}/manifests/{{split}}.tsv",
        model=lambda wc: SEMPLES.model(final_stage(METHODS[wc.method]), wc.method),
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
    threads: threads_of("semples_cams", 4)
    resources:
        gpu=GPU,
        mem_mb=lambda wc, attempt: res("semples_cams", "mem_mb", 16000) * attempt,
        runtime=res("semples_cams", "runtime", 120),
    params:
        cam=method_settings("cam"),
        precision=method_settings("precision"),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_digest("semples_cams.py"),
    script:
        "../../workflow_scripts/semples_cams.py"
