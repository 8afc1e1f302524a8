"""Rule train_demo_clip: pretrain the tiny demo CLIP on the demo world's image-caption pairs."""

from wsss.demo.clip import train_demo_clip
from wsss.devices import compute_job
from wsss.logs import logged

with logged(snakemake.log[0]) as log, compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    train_demo_clip(snakemake.input.world, snakemake.output.model, snakemake.params.settings, snakemake.params.seed,
                    log=log.info, history_path=snakemake.output.history)
