"""Rule clip_es_caa: class-aware attention affinity refinement; writes the method contract shard."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.methods.clip_es.caa import run_caa

with logged(snakemake.log[0]), compute_job(snakemake.threads):
    run_caa(
        snakemake.input.cams,
        snakemake.input.affinity,
        snakemake.params.caa,
        snakemake.output[0],
        locking=snakemake.params.hdf5["locking"],
    )
