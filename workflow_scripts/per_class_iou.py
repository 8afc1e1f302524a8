"""Rule per_class_iou: every instance's per-class IoU side by side, one figure per evaluated stage."""

from wsss.logs import logged
from wsss.stages.figures import write_per_class_figures

with logged(snakemake.log[0]):
    write_per_class_figures(snakemake.params.tables, dict(snakemake.output.items()))
