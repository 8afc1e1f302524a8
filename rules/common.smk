# Shared helpers: config validation, method instances, paths, shards, resources and code digests.
import copy
import os
import sys
from pathlib import Path

from snakemake.utils import validate

# Paths come from this file's location, so the workflow also works as a module of another workflow.
WORKFLOW_ROOT = Path(workflow.current_basedir).parent
# Parse time and every job (local, cluster or conda) import the wsss package of this workflow.
sys.path.insert(0, str(WORKFLOW_ROOT))
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [str(WORKFLOW_ROOT), os.getenv("PYTHONPATH")]))
)

from wsss import workflow_support as support
from wsss.classes import dataset_classes
from wsss.cpu_features import native_bf16
from wsss.digests import file_digest
from wsss.method_kinds import KINDS, instances_of
from wsss.shards import SHARD_PATTERN
from wsss.stages.pseudo_masks import crf_config, recipe_refiner
from wsss.source_digest import source_digest
from wsss.tables import STAGE_TITLES

# Used as a module with `config:`, Snakemake skips the configfile directive: the caller's keys are
# merged over the embedded defaults here, as --configfile merges them (docs/reuse.md).
if workflow.modifier.is_module and workflow.modifier.skip_configfile:
    config = support.with_defaults(config, WORKFLOW_ROOT / "config.yaml")
# A config on the command line that states `methods:` replaces the default instances instead of
# merging with them, so a preset never inherits the demo's ablations.
if "methods" in workflow.config_settings.overwrite_config:
    config["methods"] = copy.deepcopy(workflow.config_settings.overwrite_config["methods"])

support.check_legacy_keys(config)
validate(config, "schemas/config.schema.yaml")
# each method instance against its kind's own schema, rules/schemas/methods/<kind>.schema.yaml
support.check_instance_schemas(config["methods"], WORKFLOW_ROOT / "rules" / "schemas" / "methods")
support.check_config(config)

OUT = f"{config['output_root']}/{config['run']}"
DATASET = support.dataset_settings(config, OUT)
DATASET_CLASSES = dataset_classes(DATASET)
METHODS = support.check_methods(config["methods"], config["dataset"]["kind"])
if workflow.is_main_process:  # once, before any job (jobs parse the workflow again)
    for warning in support.method_warnings(METHODS, native_bf16()):
        print(f"WARNING: {warning}", file=sys.stderr)
PSEUDO_SPLIT = config["splits"]["pseudo"]
EVAL_SPLIT = config["splits"]["segmenter_eval"]
CAM_EVAL_SPLITS = config["splits"]["cam_eval"]
USES_DEMO_CLIP = config["clip"]["model"] == "demo"
# The CLIP the pipeline pretrains on the demo captions (rule train_demo_clip).
DEMO_CLIP = f"{OUT}/clip/demo_clip.pt"
SHARDS = {
    split: support.shards_of(config, DATASET, split)
    for split in {PSEUDO_SPLIT, EVAL_SPLIT} - {None}
}
GPU = 1 if config["resources"]["gpu_rules_use_gpu"] else 0
# The rules whose figures config resources.<rule> may set (each rule's res() calls add it; Snakefile checks).
RESOURCE_RULES = set()
# Instances whose text settings are equal share one text-feature file, keyed by their digest.
TEXT_KEYS = {
    name: support.text_key(config["clip"], method["text"])
    for name, method in METHODS.items()
    if "text" in method
}
# Instances that choose a setting on ground truth; their rows are marked oracle in the summary.
ORACLE_METHODS = {name for name, method in METHODS.items() if method.get("gt_select")}
support.check_oracles(ORACLE_METHODS, METHODS, CAM_EVAL_SPLITS)
SEGMENTER_METHODS = sorted(name for name, method in METHODS.items() if method["segmenter"])
# The workflow's own Snakefile and rule files (the rule graph figure is redrawn when one of them changes).
RULES_DIGEST = {
    str(path.relative_to(WORKFLOW_ROOT)): file_digest(path)
    for path in sorted([WORKFLOW_ROOT / "Snakefile", *(WORKFLOW_ROOT / "rules").rglob("*.smk")])
}
support.check_weights(config, trains_segmenter=bool(SEGMENTER_METHODS))


# Code no job of this run executes (the demo world's, in a run on real data) is in no code digest.
NOT_RUN = support.code_not_run(DATASET["kind"], config["clip"]["model"])


def code_digest(script):
    """Digest of a workflow script and every wsss module it imports, so editing any of them reruns the rule."""
    return source_digest(
        WORKFLOW_ROOT / "workflow_scripts" / script, WORKFLOW_ROOT / "wsss", exclude=NOT_RUN
    )


def one_of(names):
    """A wildcard pattern matching exactly these names (none: a pattern that matches nothing)."""
    return "|".join(sorted(names)) if names else "(?!)"


def method_settings(section):
    """A params function: one section of the job's method instance, keys sorted."""
    return lambda wildcards: settings(METHODS[wildcards.method][section])


def shard_files(pattern, split, **wildcards):
    """Every shard file of a split for a path pattern with {split} and {shard} (and other wildcards)."""
    return expand(pattern, split=split, shard=SHARDS[split], **wildcards)


def dataset_input(wildcards=None):
    """The generated demo world when the dataset is the demo, nothing for datasets on disk."""
    return [f"{OUT}/demo_world"] if DATASET["kind"] == "demo" else []


def checked_manifests(wildcards=None):
    """Every split's manifest: the expensive first jobs wait for its file checks (ancient: a rewritten
    manifest does not rerun them by its time stamp alone)."""
    return [ancient(f"{OUT}/manifests/{split}.tsv") for split in sorted(SHARDS)]


def clip_input(wildcards=None):
    """The demo CLIP checkpoint when the pipeline trains it, nothing for open_clip tags and local weights."""
    return [DEMO_CLIP] if USES_DEMO_CLIP else []


def refiner_of(method):
    """The pseudo-mask refiner of an instance: crf (the dense CRF) or par (pixel-adaptive refinement)."""
    return recipe_refiner(METHODS[method]["pseudo_masks"])


def refined_files(method):
    """Every shard file of an instance's refined pseudo masks (its crf or par stage) on the pseudo split."""
    return shard_files(f"{OUT}/{method}/{refiner_of(method)}/{{split}}/{{shard}}.h5", PSEUDO_SPLIT)


def label_unary(method):
    """Whether an instance's pseudo-mask recipe refines thresholded label seeds (SemPLeS) rather than probabilities."""
    return crf_config(METHODS[method]["pseudo_masks"]["crf"]).mode == "label_unary"


def oracle_threshold_input(wildcards):
    """The background threshold chosen on ground truth, for gt_select instances."""
    if wildcards.method in ORACLE_METHODS:
        return [f"{OUT}/{wildcards.method}/tables/oracle_threshold.json"]
    return []


def text_features_of(wildcards):
    """The text-feature file of the job's method instance."""
    return f"{OUT}/text/{TEXT_KEYS[wildcards.method]}/text_features.h5"


def text_settings(wildcards):
    """The text section shared by every instance with this text key."""
    name = next(name for name, key in sorted(TEXT_KEYS.items()) if key == wildcards.text_key)
    return settings(METHODS[name]["text"])


def prompt_ranking_input(wildcards):
    """The prompt ranking is needed only when the instance's text.template is 'auto'."""
    text = text_settings(wildcards)
    return (
        [f"{OUT}/text/{wildcards.text_key}/prompt_ranking.csv"]
        if text["template"] == "auto"
        else []
    )


def res(rule_name, key, default):
    """A resource figure from config resources.<rule>.<key>, else the rule's default."""
    RESOURCE_RULES.add(rule_name)
    return config["resources"].get(rule_name, {}).get(key, default)


def threads_of(rule_name, default, runs_alone=False):
    """A rule's threads: config resources.<rule>.threads, else its default capped by resources.threads_per_job
    (not for a rule that nothing can run beside, such as the demo CLIP)."""
    cap = config["resources"].get("threads_per_job")
    if cap and not runs_alone:
        default = min(default, cap)
    return res(rule_name, "threads", default)


def method_targets(name):
    """What one instance produces: pseudo masks (PNG export), their scores, the segmenter, its predictions
    (PNG export) and their scores."""
    targets = [f"{OUT}/{name}/pseudo_masks/{PSEUDO_SPLIT}/list.txt", *method_tables(name)]
    targets += [
        f"{OUT}/{name}/figures/{figure}"
        for figure in ("samples.png", "samples.pdf", "confidence.png")
    ]
    if METHODS[name]["segmenter"]:
        targets += [f"{OUT}/{name}/segmenter/model.pt", f"{OUT}/{name}/figures/training.png"]
        if EVAL_SPLIT:
            targets.append(f"{OUT}/{name}/predicted_masks/{EVAL_SPLIT}/list.txt")
    return targets


def per_class_tables(name):
    """Stage -> per-class IoU table of one instance (what the per-class figures plot)."""
    tables = {}
    if CAM_EVAL_SPLITS:
        tables["cams"] = f"{OUT}/{name}/tables/cams_per_class.csv"
        tables["pseudo_masks"] = f"{OUT}/{name}/tables/pseudo_masks_per_class.csv"
    if EVAL_SPLIT and METHODS[name]["segmenter"]:
        tables["segmenter"] = f"{OUT}/{name}/tables/segmenter_per_class.csv"
    return tables


# The stages some instance scores per class: one side-by-side figure each.
PER_CLASS_STAGES = [
    stage for stage in STAGE_TITLES if any(stage in per_class_tables(name) for name in METHODS)
]


def segmenter_model(name):
    """The instance's trained segmenter, if it trains one (the sample strips show its predictions)."""
    return [f"{OUT}/{name}/segmenter/model.pt"] if METHODS[name]["segmenter"] else []


def method_tables(name):
    """The metric CSVs of one instance; the summary joins them."""
    tables = []
    if CAM_EVAL_SPLITS:
        tables += [f"{OUT}/{name}/tables/cams.csv", f"{OUT}/{name}/tables/pseudo_masks.csv"]
    if EVAL_SPLIT and METHODS[name]["segmenter"]:
        tables.append(f"{OUT}/{name}/tables/segmenter.csv")
    return tables


def all_targets():
    """What `snakemake` builds by default: every instance's outputs, the summary tables and the figures
    that compare the instances."""
    targets = [
        f"{OUT}/tables/{table}"
        for table in ("summary.csv", "summary.md", "summary.html", "miou_by_method.csv")
    ]
    targets += [f"{OUT}/figures/rule_graph.svg"]
    targets += [f"{OUT}/figures/per_class_iou_{stage}.svg" for stage in PER_CLASS_STAGES]
    for name in sorted(METHODS):
        targets += method_targets(name)
    return targets


def settings(value):
    """A config value with mapping keys sorted: params compare as text, so YAML key order must not matter."""
    if isinstance(value, dict):
        return {key: settings(value[key]) for key in sorted(value)}
    return value
