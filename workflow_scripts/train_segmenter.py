"""Rule train_segmenter: DeepLabV2 on a method's confidence-masked pseudo masks (resumes after interruptions)."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.stages.segmenter import run_training

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_training(
        snakemake.input.manifest,
        snakemake.input.crf,
        snakemake.params.train,
        snakemake.params.n_classes,
        snakemake.params.pseudo_masks,
        snakemake.params.seed,
        snakemake.params.checkpoint_dir,
        snakemake.output.model,
        snakemake.output.history,
        locking=snakemake.params.hdf5["locking"],
    )
