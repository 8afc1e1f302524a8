"""Rule training_figure: loss and learning-rate curves of one instance's segmenter training."""

from wsss.logs import logged
from wsss.stages.figures import write_training_figure

with logged(snakemake.log[0]):
    write_training_figure(snakemake.wildcards.method, snakemake.input[0], snakemake.output[0])
