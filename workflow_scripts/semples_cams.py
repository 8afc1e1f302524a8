"""Rule semples_cams: multi-scale + flip CAMs of the trained mask generator for one shard (method contract)."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.methods.semples.cams import run_cams

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_cams(
        snakemake.input.manifest,
        snakemake.wildcards.shard,
        snakemake.params.shard_size,
        snakemake.input.model,
        snakemake.params.cam,
        snakemake.output[0],
        locking=snakemake.params.hdf5["locking"],
        precision=snakemake.params.precision,
    )
