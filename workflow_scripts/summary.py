"""Rule summary: join every evaluation's metric rows into summary.csv and summary.md."""

from wsss.logs import logged
from wsss.tables import summarize

with logged(snakemake.log[0]):
    summarize(list(snakemake.input), snakemake.output.csv, snakemake.output.md)
