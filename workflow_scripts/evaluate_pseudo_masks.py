"""Rule evaluate_pseudo_masks: mIoU of the refined labels (crf or par, before the 255 rule), coverage, confident
accuracy."""

from wsss.logs import logged
from wsss.stages.evaluate import evaluate_label_maps
from wsss.stages.pseudo_masks import recipe_refiner, recipe_threshold

with logged(snakemake.log[0]):
    evaluate_label_maps(
        snakemake.input.crf,
        snakemake.input.manifests,
        snakemake.params.dataset,
        snakemake.wildcards.method,
        {"labels": recipe_refiner(snakemake.params.pseudo_masks)},
        snakemake.output.metrics,
        snakemake.output.per_class,
        confidence_threshold=recipe_threshold(snakemake.params.pseudo_masks),
        locking=snakemake.params.hdf5["locking"],
    )
