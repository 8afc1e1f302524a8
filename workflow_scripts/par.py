"""Rule par: pixel-adaptive refinement of one shard of a method's CAMs (instances with refiner par)."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.stages.par import run_par

with logged(snakemake.log[0]), compute_job(snakemake.threads, 0):
    run_par(
        snakemake.input.cams,
        snakemake.input.manifest,
        snakemake.wildcards.shard,
        snakemake.params.shard_size,
        snakemake.params.pseudo_masks,
        snakemake.output[0],
        locking=snakemake.params.hdf5["locking"],
    )
