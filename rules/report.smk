# Report: every instance's metric rows joined into one summary table (one row per method, stage, split),
# and the run's provenance manifest (package versions, commit, config, digests of weights and outputs).


rule summary:
    input:
        tables=[table for name in sorted(METHODS) for table in method_tables(name)],
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=sorted(SHARDS)),
    output:
        csv=report(
            f"{OUT}/tables/summary.csv", caption="../report/summary.rst", category="1. Summary"
        ),
        md=report(
            f"{OUT}/tables/summary.md", caption="../report/summary.rst", category="1. Summary"
        ),
    log:
        f"{OUT}/logs/summary.log",
    conda:
        "../envs/wsss.yaml"
    params:
        oracle=sorted(ORACLE_METHODS),
        paper=config["report"]["paper"],
        code=code_digest("summary.py"),
    script:
        "../workflow_scripts/summary.py"


rule figures:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        cams=lambda wc: shard_files(f"{OUT}/{wc.method}/cams/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        crf=lambda wc: shard_files(f"{OUT}/{wc.method}/crf/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        per_class=lambda wc: list(per_class_tables(wc.method).values()),
        model=lambda wc: segmenter_model(wc.method),
    output:
        per_class=report(
            f"{OUT}/{{method}}/figures/per_class_iou.png",
            caption="../report/per_class_iou.rst",
            category="2. Per-class IoU",
            subcategory="{method}",
        ),
        samples=report(
            f"{OUT}/{{method}}/figures/samples.png",
            caption="../report/samples.rst",
            category="3. Samples",
            subcategory="{method}",
        ),
        confidence=report(
            f"{OUT}/{{method}}/figures/confidence.png",
            caption="../report/confidence.rst",
            category="4. Pseudo-mask confidence",
            subcategory="{method}",
        ),
    log:
        f"{OUT}/{{method}}/logs/figures.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/figures.tsv"
    conda:
        "../envs/wsss.yaml"
    params:
        per_class=lambda wc: per_class_tables(wc.method),
        pseudo_masks=method_settings("pseudo_masks"),
        samples=config["report"]["samples"],
        hdf5=settings(config["hdf5"]),
        code=code_digest("figures.py"),
    script:
        "../workflow_scripts/figures.py"


rule training_figure:
    input:
        f"{OUT}/{{method}}/segmenter/loss_history.csv",
    output:
        report(
            f"{OUT}/{{method}}/figures/training.png",
            caption="../report/training.rst",
            category="5. Segmenter training",
            subcategory="{method}",
        ),
    log:
        f"{OUT}/{{method}}/logs/training_figure.log",
    wildcard_constraints:
        method=one_of(SEGMENTER_METHODS),
    conda:
        "../envs/wsss.yaml"
    params:
        code=code_digest("training_figure.py"),
    script:
        "../workflow_scripts/training_figure.py"


rule rule_times:
    input:
        all_targets(),
    output:
        report(
            f"{OUT}/tables/rule_times.csv",
            caption="../report/rule_times.rst",
            category="6. Resources",
        ),
    log:
        f"{OUT}/logs/rule_times.log",
    conda:
        "../envs/wsss.yaml"
    params:
        run_dir=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),
        code=code_digest("rule_times.py"),
    script:
        "../workflow_scripts/rule_times.py"


rule run_manifest:
    input:
        results=all_targets(),
        times=f"{OUT}/tables/rule_times.csv",
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=sorted(SHARDS)),
    output:
        report(
            f"{OUT}/manifest.json",
            caption="../report/manifest.rst",
            category="7. Configuration and provenance",
        ),
    log:
        f"{OUT}/logs/run_manifest.log",
    conda:
        "../envs/wsss.yaml"
    params:
        run_dir=lambda wc, output: os.path.dirname(output[0]),
        config=settings(config),
        weights=named_weights(),
        code=code_digest("run_manifest.py"),
    script:
        "../workflow_scripts/run_manifest.py"
