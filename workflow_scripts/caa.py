"""Rule caa: class-aware attention affinity refinement of one shard's CAMs."""

from wsss.logs import logged
from wsss.stages.devices import compute_job
from wsss.stages.cams import run_caa

with logged(snakemake.log[0]), compute_job(snakemake.threads):
    run_caa(
        snakemake.input.cams,
        snakemake.input.affinity,
        snakemake.params.caa,
        snakemake.output[0],
        locking=snakemake.params.hdf5["locking"],
    )
