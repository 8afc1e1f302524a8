"""Rule evaluate_cams: mIoU of initial, refined and ablation CAMs for each background exponent."""

from wsss.logs import logged
from wsss.stages.evaluate import evaluate_cams

with logged(snakemake.log[0]):
    evaluate_cams(
        snakemake.input.cams,
        snakemake.input.caa,
        snakemake.input.manifests,
        snakemake.config,
        snakemake.params.dataset,
        snakemake.params.alphas,
        snakemake.params.method,
        snakemake.output.metrics,
        snakemake.output.per_class,
        locking=snakemake.params.hdf5["locking"],
    )
