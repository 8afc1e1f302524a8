"""Rule select_prompt: rank the candidate templates by sharpness on the multi-label training images."""

from wsss.logs import logged
from wsss.stages.devices import compute_job
from wsss.stages.cams import run_prompt_ranking

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_prompt_ranking(
        snakemake.params.clip,
        list(snakemake.input.clip),
        snakemake.config,
        snakemake.params.dataset,
        snakemake.input.manifest,
        snakemake.params.text["candidates"],
        snakemake.output[0],
    )
