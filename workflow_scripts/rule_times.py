"""Rule rule_times: wall time and peak memory per rule of the run, from its benchmark files."""

from wsss.logs import logged
from wsss.stages.report import write_rule_times

with logged(snakemake.log[0]):
    write_rule_times(snakemake.params.run_dir, snakemake.output[0])
