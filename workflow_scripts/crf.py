"""Rule crf: a method's dense-CRF recipe on one shard of its CAMs (a process pool of `threads` workers)."""

from wsss.logs import logged
from wsss.stages.pseudo_masks import run_crf

# The CRF pool spawns workers that re-import this file; only the parent may run the stage.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_crf(
            snakemake.input.cams,
            snakemake.input.manifest,
            snakemake.wildcards.shard,
            snakemake.params.shard_size,
            snakemake.params.crf,
            snakemake.output[0],
            workers=snakemake.threads,
            locking=snakemake.params.hdf5["locking"],
            oracle_threshold=next(iter(snakemake.input.oracle_threshold), None),
        )
