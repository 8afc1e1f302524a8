"""Rule figures: one instance's sample strips (PNG and PDF) and pseudo-mask confidence histogram."""

from wsss.logs import logged
from wsss.stages.figures import write_method_figures

with logged(snakemake.log[0]):
    write_method_figures(
        snakemake.wildcards.method,
        snakemake.input.manifest,
        snakemake.input.cams,
        snakemake.input.crf,
        snakemake.params.classes,
        snakemake.params.pseudo_masks,
        snakemake.input.model[0] if snakemake.input.model else None,
        snakemake.params.samples,
        snakemake.output,
        locking=snakemake.params.hdf5["locking"],
    )
