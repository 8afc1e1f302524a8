"""Rule semples_phase1: WeakTr phase 1, the mask generator trained on image-level labels."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.methods.semples.train import train_phase1

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    train_phase1(
        snakemake.input.manifest,
        snakemake.params.n_classes,
        snakemake.params.method,
        snakemake.output[0],
        snakemake.params.checkpoint_dir,
        code=snakemake.params.code,
        clip_checkpoint=list(snakemake.input.clip),
        tokens=snakemake.params.tokens,
    )
