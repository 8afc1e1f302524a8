"""Rule semples_prompts: SemPLeS stage b, class-specific background prompts, and their nearest words."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.methods.semples.train import train_prompts

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    train_prompts(
        snakemake.input.manifest,
        snakemake.input.match,
        list(snakemake.input.clip),
        snakemake.params.class_names,
        snakemake.params.method,
        snakemake.output.prompts,
        snakemake.output.nearest_words,
        snakemake.params.checkpoint_dir,
        code=snakemake.params.code,
    )
