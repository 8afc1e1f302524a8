"""Rule excel_cams: ExCEL's training-free CAMs of one shard (the method contract)."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.methods.excel.cams import run_excel_cams

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_excel_cams(
        snakemake.input.manifest,
        snakemake.wildcards.shard,
        snakemake.params.shard_size,
        snakemake.input.text,
        list(snakemake.input.bank),
        snakemake.params.clip,
        list(snakemake.input.clip),
        snakemake.params.method,
        snakemake.output[0],
        locking=snakemake.params.hdf5["locking"],
    )
