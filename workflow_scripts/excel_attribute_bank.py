"""Rule excel_attribute_bank: cluster a descriptor set into ExCEL's attribute bank (or read the released one)."""

from wsss.devices import compute_job
from wsss.logs import logged
from wsss.methods.excel.bank import run_attribute_bank

with logged(snakemake.log[0]), compute_job(snakemake.threads, snakemake.resources.get("gpu", 0)):
    run_attribute_bank(
        snakemake.input.descriptors[0] if snakemake.input.descriptors else None,
        snakemake.params.classes,
        snakemake.params.attributes,
        snakemake.params.clip,
        list(snakemake.input.clip),
        snakemake.output[0],
        locking=snakemake.params.hdf5["locking"],
    )
