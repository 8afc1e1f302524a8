"""Rule manifest: one table per split (image id, path, size, labels, ground truth)."""

from wsss.logs import logged
from wsss.stages.data import write_split_manifest

with logged(snakemake.log[0]):
    write_split_manifest(
        snakemake.params.dataset,
        snakemake.wildcards.split,
        snakemake.output[0],
        snakemake.params.on_unlabeled,
        snakemake.params.expected_rows,
        on_bad_image=snakemake.params.dataset["on_bad_image"],
        max_pixels=snakemake.params.dataset["max_pixels"],
        workers=snakemake.threads,
    )
