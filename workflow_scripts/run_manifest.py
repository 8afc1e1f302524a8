"""Rule run_manifest: the run's provenance record, results/<run>/manifest.json (checked by wsss-verify)."""

from pathlib import Path

from wsss.logs import logged
from wsss.provenance import write_run_manifest

with logged(snakemake.log[0]):
    write_run_manifest(
        snakemake.params.run_dir,
        snakemake.params.config,
        snakemake.params.weights,
        list(snakemake.input.manifests),
        Path(snakemake.scriptdir).parent,  # the workflow's checkout, for its git commit (not a rerun trigger)
        snakemake.output[0],
    )
