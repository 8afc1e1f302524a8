"""Rule summary: join every instance's metric rows into summary.csv, summary.md, summary.html and the mIoU table."""

from wsss.logs import logged
from wsss.stages.report import write_summary

with logged(snakemake.log[0]):
    write_summary(
        list(snakemake.input.tables),
        list(snakemake.input.manifests),
        snakemake.output.csv,
        snakemake.output.md,
        snakemake.params.oracle,
        paper=snakemake.params.paper,
        html_path=snakemake.output.html,
        wide_csv_path=snakemake.output.miou,
        run=snakemake.params.run,
    )
