# wsss: weakly supervised semantic segmentation with CLIP as a cached Snakemake DAG. Method instances
# (config `methods:`) write CAM shards; a shared tail turns them into pseudo masks, a segmenter and scores.
# The default config is the offline demo world; real-data presets live in configs/.
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.current_basedir}/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    shard=SHARD_PATTERN,
    split=r"[A-Za-z0-9_]+",
    method=one_of(METHODS),
    text_key=r"[0-9a-f]{12}",
    key=r"[0-9a-f]{12}",


include: "rules/data.smk"
include: "rules/clip.smk"


# every registered method kind's rules (wsss/method_kinds.py)
for kind in KINDS:

    include: f"rules/methods/{kind}.smk"


include: "rules/pseudo_masks.smk"
include: "rules/segmenter.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


localrules:
    all,
    summary,
    per_class_iou,
    rule_graph,
    rule_times,
    run_manifest,


rule all:
    default_target: True
    input:
        all_targets(),
        f"{OUT}/manifest.json",


# every resources.<name> of the config names a rule (the rules' res() calls record theirs)
support.check_resource_keys(config["resources"], RESOURCE_RULES)
