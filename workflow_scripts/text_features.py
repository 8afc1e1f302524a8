"""Rule text_features: prompt embeddings of the classes (synonyms fused) and the background words."""

from wsss.classes import dataset_vocabulary
from wsss.devices import compute_job
from wsss.logs import logged
from wsss.stages.clip import chosen_template, run_text_features

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_text_features(
        # an instance's text.precision (ExCEL: fp32) overrides the CLIP's for its text features
        {**snakemake.params.clip, **{k: v for k, v in snakemake.params.text.items() if k == "precision"}},
        list(snakemake.input.clip),
        dataset_vocabulary(snakemake.params.dataset, snakemake.params.text),
        chosen_template(snakemake.params.text, list(snakemake.input.ranking)),
        snakemake.output[0],
        locking=snakemake.params.hdf5["locking"],
    )
