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
from wsss.classes import dataset_vocabulary
from wsss.methods import instances_of
from wsss.shards import SHARD_PATTERN
from wsss.source_digest import source_digest

# A config on the command line that states `methods:` replaces the default instances instead of
# merging with them, so a preset never inherits the demo's ablations.
if "methods" in workflow.config_settings.overwrite_config:
    config["methods"] = copy.deepcopy(workflow.config_settings.overwrite_config["methods"])

support.check_legacy_keys(config)
validate(config, "schemas/config.schema.yaml")
support.check_config(config)

OUT = f"{config['output_root']}/{config['run']}"
DATASET = support.dataset_settings(config, OUT)
DATASET_CLASSES = dataset_vocabulary(DATASET).classes
METHODS = support.check_methods(config["methods"])
PSEUDO_SPLIT = config["splits"]["pseudo"]
EVAL_SPLIT = config["splits"]["segmenter_eval"]
CAM_EVAL_SPLITS = config["splits"]["cam_eval"]
USES_DEMO_CLIP = config["clip"]["model"] == "demo"
SHARDS = {
    split: support.shards_of(config, DATASET, split)
    for split in {PSEUDO_SPLIT, EVAL_SPLIT} - {None}
}
GPU = 1 if config["resources"]["gpu_rules_use_gpu"] else 0
# Instances whose text settings are equal share one text-feature file, keyed by their digest.
TEXT_KEYS = {
    name: support.text_key(config["clip"], method["text"]) for name, method in METHODS.items()
}
SEGMENTER_METHODS = sorted(name for name, method in METHODS.items() if method["segmenter"])


def code_digest(script):
    """Digest of a workflow script and every wsss module it imports, so editing any of them reruns the rule."""
    return source_digest(WORKFLOW_ROOT / "workflow_scripts" / script, WORKFLOW_ROOT / "wsss")


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


def clip_input(wildcards=None):
    """The demo CLIP checkpoint when the pipeline trains it, nothing for open_clip tags and local weights."""
    return [f"{OUT}/clip/demo_clip.pt"] if USES_DEMO_CLIP else []


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
    """A resource figure from config resources.<rule>.<key>, else the documented default."""
    return config["resources"].get(rule_name, {}).get(key, default)


def method_targets(name):
    """What one instance produces: pseudo masks (PNG export), their scores, and the segmenter's."""
    targets = [f"{OUT}/{name}/pseudo_masks/{PSEUDO_SPLIT}/list.txt", *method_tables(name)]
    if METHODS[name]["segmenter"]:
        targets.append(f"{OUT}/{name}/segmenter/model.pt")
    return targets


def method_tables(name):
    """The metric CSVs of one instance; the summary joins them."""
    tables = []
    if CAM_EVAL_SPLITS:
        tables += [f"{OUT}/{name}/tables/cams.csv", f"{OUT}/{name}/tables/pseudo_masks.csv"]
    if EVAL_SPLIT and METHODS[name]["segmenter"]:
        tables.append(f"{OUT}/{name}/tables/segmenter.csv")
    return tables


def all_targets():
    """What `snakemake` builds by default: every instance's outputs and the summary tables."""
    targets = [f"{OUT}/tables/summary.csv", f"{OUT}/tables/summary.md"]
    for name in sorted(METHODS):
        targets += method_targets(name)
    return targets


def settings(value):
    """A config value with mapping keys sorted: params compare as text, so YAML key order must not matter."""
    if isinstance(value, dict):
        return {key: settings(value[key]) for key in sorted(value)}
    return value
