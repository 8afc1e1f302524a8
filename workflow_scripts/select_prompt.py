"""Rule select_prompt: rank the candidate templates by sharpness on the multi-label training images."""

from wsss.classes import dataset_vocabulary
from wsss.devices import compute_job
from wsss.logs import logged
from wsss.stages.clip import run_prompt_ranking

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_prompt_ranking(
        snakemake.params.clip,
        list(snakemake.input.clip),
        dataset_vocabulary(snakemake.params.dataset, snakemake.params.text),
        snakemake.input.manifest,
        snakemake.params.text["candidates"],
        snakemake.output[0],
    )
