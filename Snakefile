# wsss: weakly supervised semantic segmentation with CLIP (CLIP-ES), as a cached Snakemake DAG.
# The default config is the offline demo world; real-data presets live in configs/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    shard=SHARD_PATTERN,
    split=r"[A-Za-z0-9_]+",


include: "rules/data.smk"
include: "rules/clip.smk"
include: "rules/cams.smk"
include: "rules/crf.smk"
include: "rules/segmenter.smk"
include: "rules/report.smk"


localrules:
    all,
    summary,


rule all:
    default_target: True
    input:
        all_targets(),
