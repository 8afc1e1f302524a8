"""Rule cams: softmax-GradCAM (initial CAMs) and the attention affinity input for one shard."""

from wsss.logs import logged
from wsss.stages.cams import run_cams
from wsss.stages.devices import gpu_job

with logged(snakemake.log[0]), gpu_job(snakemake.resources.get("gpu", 0)):
    run_cams(
        snakemake.input.manifest,
        snakemake.wildcards.shard,
        snakemake.params.shard_size,
        snakemake.input.text,
        snakemake.params.clip,
        list(snakemake.input.clip),
        snakemake.params.cam,
        snakemake.output.cams,
        snakemake.output.affinity,
        locking=snakemake.params.hdf5["locking"],
    )
