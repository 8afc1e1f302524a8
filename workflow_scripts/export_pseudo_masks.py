"""Rule export_pseudo_masks: training masks (255 = low confidence) as VOC-palette PNGs for other tools."""

from wsss.logs import logged
from wsss.stages.pseudo_masks import export_pseudo_masks

with logged(snakemake.log[0]):
    export_pseudo_masks(
        snakemake.input.crf,
        snakemake.input.manifest,
        snakemake.params.pseudo_masks,
        snakemake.output.listing,
        locking=snakemake.params.hdf5["locking"],
    )
