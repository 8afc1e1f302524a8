"""Rule semples_refine: SemPLeS stage c, prompt-guided refinement restarting from the phase-1 mask generator."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.methods.semples.train import train_refine

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    train_refine(
        snakemake.input.manifest,
        snakemake.input.phase1,
        snakemake.input.prompts,
        list(snakemake.input.clip),
        snakemake.params.class_names,
        snakemake.params.method,
        snakemake.output[0],
        snakemake.params.checkpoint_dir,
        code=snakemake.params.code,
        imported=snakemake.params.imported_phase1,
    )
