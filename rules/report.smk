# Report: every instance's metric rows joined into one summary (one row per method, stage, split), the rule
# graph, figures that set the instances side by side, and the run's provenance manifest (package versions,
# commit, config, digests of weights and outputs). The report's categories, in order:
CATEGORIES = {
    "summary": "1. Summary",
    "per_class": "2. IoU per class",
    "samples": "3. Samples",
    "confidence": "4. Pseudo-mask confidence",
    "training": "5. Segmenter training",
    "resources": "6. Time and memory",
    "provenance": "7. Configuration and provenance",
}


rule summary:
    input:
        tables=[table for name in sorted(METHODS) for table in method_tables(name)],
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=sorted(SHARDS)),
    output:
        html=report(
            f"{OUT}/tables/summary.html",
            caption="../report/summary.rst",
            category=CATEGORIES["summary"],
            labels={"table": "summary (every table)"},
        ),
        miou=report(
            f"{OUT}/tables/miou_by_method.csv",
            caption="../report/summary.rst",
            category=CATEGORIES["summary"],
            labels={"table": "mIoU by method (CSV)"},
        ),
        csv=report(
            f"{OUT}/tables/summary.csv",
            caption="../report/summary.rst",
            category=CATEGORIES["summary"],
            labels={"table": "every metric (CSV, long format)"},
        ),
        md=report(
            f"{OUT}/tables/summary.md",
            caption="../report/summary.rst",
            category=CATEGORIES["summary"],
            labels={"table": "summary (Markdown)"},
        ),
    log:
        f"{OUT}/logs/summary.log",
    conda:
        "../envs/wsss.yaml"
    params:
        oracle=sorted(ORACLE_METHODS),
        paper=config["report"]["paper"],
        run=config["run"],
        code=code_digest("summary.py"),
    script:
        "../workflow_scripts/summary.py"


rule rule_graph:
    output:
        report(
            f"{OUT}/figures/rule_graph.svg",
            caption="../report/rule_graph.rst",
            category=CATEGORIES["summary"],
            labels={"table": "rule graph (figure)"},
        ),
    log:
        f"{OUT}/logs/rule_graph.log",
    conda:
        "../envs/wsss.yaml"
    params:
        config=settings(config),
        rules=RULES_DIGEST,
        code=code_digest("rule_graph.py"),
    script:
        "../workflow_scripts/rule_graph.py"


rule per_class_iou:
    input:
        [table for name in sorted(METHODS) for table in per_class_tables(name).values()],
    output:
        **{
            stage: report(
                f"{OUT}/figures/per_class_iou_{stage}.svg",
                caption="../report/per_class_iou.rst",
                category=CATEGORIES["per_class"],
                labels={"stage": STAGE_TITLES[stage]},
            )
            for stage in PER_CLASS_STAGES
        },
    log:
        f"{OUT}/logs/per_class_iou.log",
    conda:
        "../envs/wsss.yaml"
    params:
        tables={name: per_class_tables(name) for name in sorted(METHODS)},
        code=code_digest("per_class_iou.py"),
    script:
        "../workflow_scripts/per_class_iou.py"


rule figures:
    input:
        manifest=f"{OUT}/manifests/{PSEUDO_SPLIT}.tsv",
        cams=lambda wc: shard_files(f"{OUT}/{wc.method}/cams/{{split}}/{{shard}}.h5", PSEUDO_SPLIT),
        crf=lambda wc: refined_files(wc.method),
        model=lambda wc: segmenter_model(wc.method),
    output:
        samples=report(
            f"{OUT}/{{method}}/figures/samples.png",
            caption="../report/samples.rst",
            category=CATEGORIES["samples"],
            labels={"instance": "{method}"},
        ),
        samples_pdf=f"{OUT}/{{method}}/figures/samples.pdf",
        confidence=report(
            f"{OUT}/{{method}}/figures/confidence.png",
            caption="../report/confidence.rst",
            category=CATEGORIES["confidence"],
            labels={"instance": "{method}"},
        ),
    log:
        f"{OUT}/{{method}}/logs/figures.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/figures.tsv"
    conda:
        "../envs/wsss.yaml"
    params:
        classes=list(DATASET_CLASSES),
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
            category=CATEGORIES["training"],
            labels={"instance": "{method}"},
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
            category=CATEGORIES["resources"],
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
            category=CATEGORIES["provenance"],
        ),
    log:
        f"{OUT}/logs/run_manifest.log",
    conda:
        "../envs/wsss.yaml"
    params:
        run_dir=lambda wc, output: os.path.dirname(output[0]),
        config=settings(config),
        weights=support.named_files(config, METHODS),
        code=code_digest("run_manifest.py"),
    script:
        "../workflow_scripts/run_manifest.py"
