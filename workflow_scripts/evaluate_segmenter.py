"""Rule evaluate_segmenter: mIoU of a method's segmenter with and without test-time CRF on a split."""

from wsss.logs import logged
from wsss.stages.evaluate import evaluate_predictions

with logged(snakemake.log[0]):
    evaluate_predictions(
        snakemake.input.predictions,
        snakemake.input.manifest,
        snakemake.params.dataset,
        snakemake.wildcards.method,
        snakemake.output.metrics,
        snakemake.output.per_class,
        snakemake.output.per_class_md,
        locking=snakemake.params.hdf5["locking"],
    )
