"""Rule semples_match: SemPLeS stage a (segment-label matching) from the phase-1 mask generator."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.methods.semples.train import train_match

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    train_match(
        snakemake.input.manifest,
        snakemake.input.phase1,
        list(snakemake.input.clip),
        snakemake.params.class_names,
        snakemake.params.method,
        snakemake.output[0],
        snakemake.params.checkpoint_dir,
        code=snakemake.params.code,
        imported=snakemake.params.imported_phase1,
    )
