"""Rule export_predictions: a split's segmenter predictions as VOC-palette PNGs with deeplab/mmseg lists."""

from wsss.logs import logged
from wsss.stages.segmenter import export_predictions

with logged(snakemake.log[0]):
    export_predictions(
        snakemake.input.predictions,
        snakemake.input.manifest,
        snakemake.output.listing,
        locking=snakemake.params.hdf5["locking"],
    )
