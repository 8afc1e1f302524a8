"""Rule select_oracle_threshold: the background threshold of a gt_select instance, chosen on ground truth."""

from wsss.logs import logged
from wsss.stages.evaluate import select_threshold

with logged(snakemake.log[0]):
    select_threshold(
        snakemake.input.cams,
        snakemake.input.manifests,
        snakemake.params.dataset,
        snakemake.output[0],
        locking=snakemake.params.hdf5["locking"],
    )
