"""Rule clip_es_gradcam: softmax-GradCAM (initial CAMs) and the attention affinity input for one shard."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.methods.clip_es.gradcam import run_gradcam

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_gradcam(
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
