# Report: every evaluation's long-format rows joined into one summary table.


rule summary:
    input:
        metric_tables(),
    output:
        csv=f"{OUT}/tables/summary.csv",
        md=f"{OUT}/tables/summary.md",
    log:
        f"{OUT}/logs/summary.log",
    conda:
        "../envs/wsss.yaml"
    params:
        code=code_version("tables"),
    script:
        "../workflow_scripts/summary.py"
