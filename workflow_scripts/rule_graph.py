"""Rule rule_graph: the workflow's rule graph (one node per rule) as a figure for the report."""

from pathlib import Path

from wsss.logs import logged
from wsss.stages.report import rulegraph_dot, write_rule_graph

# this workflow's own Snakefile (also when the run uses it as a module of another workflow)
snakefile = Path(snakemake.scriptdir).parent / "Snakefile"
with logged(snakemake.log[0]):
    write_rule_graph(rulegraph_dot(snakefile, snakemake.params.config, "."), snakemake.output[0])
