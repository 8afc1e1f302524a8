# Report: every instance's metric rows joined into one summary table (one row per method, stage, split).


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
