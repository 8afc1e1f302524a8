# Report: every instance's metric rows joined into one summary table (one row per method, stage, split),
# and the run's provenance manifest (package versions, commit, config, digests of weights and outputs).


rule summary:
    input:
        tables=[table for name in sorted(METHODS) for table in method_tables(name)],
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=sorted(SHARDS)),
    output:
        csv=report(f"{OUT}/tables/summary.csv", category="Summary"),
        md=f"{OUT}/tables/summary.md",
    log:
        f"{OUT}/logs/summary.log",
    conda:
        "../envs/wsss.yaml"
    params:
        oracle=sorted(ORACLE_METHODS),
        code=code_digest("summary.py"),
    script:
        "../workflow_scripts/summary.py"


rule run_manifest:
    input:
        results=all_targets(),
        manifests=expand(f"{OUT}/manifests/{{split}}.tsv", split=sorted(SHARDS)),
    output:
        f"{OUT}/manifest.json",
    log:
        f"{OUT}/logs/run_manifest.log",
    conda:
        "../envs/wsss.yaml"
    params:
        run_dir=lambda wc, output: os.path.dirname(output[0]),
        config=settings(config),
        weights=named_weights(),
        workflow_dir=str(WORKFLOW_ROOT),
        code=code_digest("run_manifest.py"),
    script:
        "../workflow_scripts/run_manifest.py"
