"""Rule evaluate_cams: mIoU of every CAM map of a method's contract shards, for each background rule."""

from wsss.logs import logged
from wsss.stages.evaluate import evaluate_cams

with logged(snakemake.log[0]):
    evaluate_cams(
        snakemake.input.cams,
        snakemake.input.manifests,
        snakemake.params.dataset,
        snakemake.params.alphas,
        snakemake.wildcards.method,
        snakemake.output.metrics,
        snakemake.output.per_class,
        locking=snakemake.params.hdf5["locking"],
        thresholds=snakemake.params.thresholds,
        oracle_threshold=next(iter(snakemake.input.oracle_threshold), None),
    )
