# Helpers shared by the rule files (config validation, paths, shard lists, resources, code versions).
import hashlib
from pathlib import Path

from snakemake.utils import validate

from wsss import workflow_support as support
from wsss.classes import dataset_vocabulary
from wsss.shards import SHARD_PATTERN

validate(config, "schemas/config.schema.yaml")
support.check_config(config)

RUN = config["run"]
OUT = f"results/{RUN}"
REPO = Path(workflow.basedir)
DATASET = support.dataset_settings(config, OUT)
VOCABULARY = dataset_vocabulary(config, DATASET)
DATASET_CLASSES = VOCABULARY.classes
PSEUDO_SPLIT = config["splits"]["pseudo"]
EVAL_SPLIT = config["splits"]["segmenter_eval"]
USES_DEMO_CLIP = config["clip"]["model"] == "demo"
SHARDS = {
    split: support.shards_of(config, DATASET, split)
    for split in {PSEUDO_SPLIT, EVAL_SPLIT} - {None}
}
GPU = 1 if config["resources"].get("gpu_rules_use_gpu", True) else 0


def code_version(*modules):
    """Digest of the package modules a rule runs, so editing them reruns the rule (scripts' imports are not tracked)."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update((REPO / "wsss" / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]


def shard_files(pattern, split):
    """Every shard file of a split for a path pattern with {split} and {shard}."""
    return expand(pattern, split=split, shard=SHARDS[split])


def dataset_input(wildcards=None):
    """The generated demo world when the dataset is the demo, nothing for datasets on disk."""
    return [f"{OUT}/demo_world"] if DATASET["kind"] == "demo" else []


def clip_input(wildcards=None):
    """The demo CLIP checkpoint when the pipeline trains it, nothing for open_clip tags and local weights."""
    return [f"{OUT}/clip/demo_clip.pt"] if USES_DEMO_CLIP else []


def prompt_ranking_input(wildcards=None):
    """The prompt ranking is needed only when text.template is 'auto'."""
    return [f"{OUT}/text/prompt_ranking.csv"] if config["text"]["template"] == "auto" else []


def res(rule_name, key, default):
    """A resource figure from config resources.<rule>.<key>, else the documented default."""
    return config["resources"].get(rule_name, {}).get(key, default)


def all_targets():
    """What `snakemake` builds by default: the summary tables (which pull in every stage) and the PNG export."""
    targets = [f"{OUT}/tables/summary.csv", f"{OUT}/tables/summary.md"]
    targets.append(f"{OUT}/pseudo_masks/{PSEUDO_SPLIT}/list.txt")
    return targets


def metric_tables():
    """The metric CSVs the configured run produces; the summary rule joins them."""
    tables = []
    if config["splits"]["cam_eval"]:
        tables += [f"{OUT}/tables/cams.csv", f"{OUT}/tables/pseudo_masks.csv"]
    if EVAL_SPLIT:
        tables.append(f"{OUT}/tables/segmenter.csv")
    return tables


def settings(value):
    """A config value with mapping keys sorted: params compare as text, so YAML key order must not matter."""
    if isinstance(value, dict):
        return {key: settings(value[key]) for key in sorted(value)}
    return value
