"""Rule predict: segmenter predictions (multi-scale, flip, optional dense CRF) for one shard of a split."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.stages.segmenter import run_prediction

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_prediction(
        snakemake.input.model,
        snakemake.input.manifest,
        snakemake.wildcards.shard,
        snakemake.params.shard_size,
        snakemake.params.predict,
        snakemake.output[0],
        locking=snakemake.params.hdf5["locking"],
    )
