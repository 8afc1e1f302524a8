"""Parse-time helpers for the Snakefile: semantic config checks, dataset settings and shard counts.

Kept in the package (not in rules/common.smk) so they are unit-tested; nothing here imports snakemake.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from wsss.clip import looks_like_path
from wsss.datasets import split_ids, split_source
from wsss.digests import params_digest
from wsss.method_kinds import kind_hook, kind_of, merged, resolve_methods
from wsss.shards import shard_names


class ConfigError(ValueError):
    """A config value that passes the schema but cannot work; the message names the key."""


_REQUIRED_DATASET_KEYS = {
    "voc": ("root",),
    "coco": ("splits",),
    "custom": ("splits", "class_list"),
    "demo": (),
}
_DEMO_SPLITS = {"train": "n_train", "val": "n_val", "clip_pretrain": "n_clip"}


# Sections of the single-method layout, and where their settings live now.
_MOVED_KEYS = {
    "method": "methods: (named instances, e.g. methods: {clip_es: {kind: clip_es}})",
    "text": "methods.<instance>.text",
    "cam": "methods.<instance>.cam",
    "caa": "methods.<instance>.caa",
    "crf": "methods.<instance>.pseudo_masks.crf (confidence_threshold: methods.<instance>.pseudo_masks; "
    "the test-time CRF: segmenter.predict.crf)",
}


def check_legacy_keys(config: Mapping[str, Any]) -> None:
    """Name the new home of settings written for the single-method layout, before the schema rejects them."""
    for key, home in _MOVED_KEYS.items():
        if key in config:
            raise ConfigError(f"config key {key!r} has moved: its settings now go under {home}")
    flat = sorted(set(config.get("segmenter") or {}) - {"train", "predict"})
    if flat:
        raise ConfigError(f"segmenter.{flat[0]}: segmenter settings now sit under segmenter.train "
                          "(training) and segmenter.predict (scales, flip, crf)")


def with_defaults(given: Mapping[str, Any], defaults_path: str | Path) -> dict[str, Any]:
    """A caller's config merged over the workflow's defaults (its config.yaml), as ``--configfile`` merges.

    As on the command line, a ``methods:`` the caller states replaces the default instances.
    """
    defaults = yaml.safe_load(Path(defaults_path).read_text())
    out = merged(defaults, given)
    if "methods" in given:
        out["methods"] = copy.deepcopy(dict(given["methods"]))
    return out


def text_key(clip: Mapping[str, Any], text: Mapping[str, Any]) -> str:
    """Folder name of the text features for these CLIP and text settings (equal settings share one file)."""
    return params_digest({"clip": dict(clip), "text": dict(text)})[:12]


def check_config(config: Mapping[str, Any]) -> None:
    """Checks the JSON schema cannot express; raise ConfigError naming the key."""
    dataset = config["dataset"]
    for key in _REQUIRED_DATASET_KEYS[dataset["kind"]]:
        if not dataset.get(key):
            raise ConfigError(f"dataset.{key} is required when dataset.kind is {dataset['kind']!r}")
    if dataset["kind"] == "demo":
        demo = config.get("demo_world", {})
        if demo.get("min_size", 88) > demo.get("max_size", 120):
            raise ConfigError("demo_world.min_size must not exceed demo_world.max_size")
        for key in ("pseudo", "segmenter_eval"):
            split = config["splits"].get(key)
            if split is not None and split not in _DEMO_SPLITS:
                raise ConfigError(f"splits.{key}: the demo world has splits {sorted(_DEMO_SPLITS)}, not {split!r}")
    if config["clip"]["model"] == "demo" and config["clip"].get("pretrained"):
        raise ConfigError("clip.pretrained must be null when clip.model is 'demo' (the pipeline trains it)")
    if config["clip"]["model"] != "demo" and not config["clip"].get("pretrained"):
        raise ConfigError(
            f"clip.pretrained is required for clip.model {config['clip']['model']!r}: "
            "an open_clip tag such as 'openai' or a local checkpoint path"
        )
    demo_clip = config.get("demo_clip", {})
    if config["clip"]["model"] == "demo" and demo_clip:
        from wsss.demo.clip_settings import resolve_settings

        try:
            resolve_settings(demo_clip)
        except ValueError as error:
            raise ConfigError(str(error)) from None


def check_instance_schemas(instances: Mapping[str, Any], schema_dir: str | Path) -> None:
    """Check each method instance against its kind's own schema, ``<schema_dir>/<kind>.schema.yaml``.

    The config schema checks only what every instance shares (``kind``, ``segmenter``, ``pseudo_masks``), so
    a kind brings its settings' schema in its own file; the error names the instance's key.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validators: dict[str, Draft202012Validator] = {}  # one per kind
    for name, instance in instances.items():
        try:
            kind = kind_of(name, instance)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        path = Path(schema_dir) / f"{kind}.schema.yaml"
        if kind not in validators:
            if not path.is_file():
                raise ConfigError(f"methods.{name}.kind: the kind {kind!r} has no schema file {path}")
            validators[kind] = Draft202012Validator(yaml.safe_load(path.read_text()))
        error = best_match(validators[kind].iter_errors(dict(instance)))
        if error is not None:
            key = ".".join(["methods", name, *(str(part) for part in error.absolute_path)])
            raise ConfigError(f"{key}: {error.message} (schema: {path.name})")


def check_methods(instances: Mapping[str, Any], dataset_kind: str = "demo") -> dict[str, dict[str, Any]]:
    """Resolve the method instances and run each kind's own checks (``check_instance``); return the settings."""
    try:
        methods = resolve_methods(instances)
        for name, method in methods.items():
            check = kind_hook(method["kind"], "check_instance")
            if check is not None:
                check(name, method, dataset_kind)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return methods


def method_warnings(methods: Mapping[str, Any], native_bf16: bool) -> list[str]:
    """Each kind's warnings about its instances (e.g. bf16 emulated on this CPU), each naming its key."""
    warnings = []
    for name, method in sorted(methods.items()):
        warn = kind_hook(method["kind"], "instance_warnings")
        if warn is not None:
            warnings += warn(name, method, native_bf16)
    return warnings


def named_files(config: Mapping[str, Any], methods: Mapping[str, Any]) -> dict[str, str]:
    """Config key -> every weight or data file the config names, for the run manifest (tags name no file)."""
    named = {
        "clip.pretrained": config["clip"].get("pretrained"),
        "segmenter.train.init_path": ((config.get("segmenter") or {}).get("train") or {}).get("init_path"),
    }
    for name, method in sorted(methods.items()):
        files = kind_hook(method["kind"], "named_files")
        if files is not None:
            named.update(files(name, method))
    return {key: str(path) for key, path in named.items() if path}


def check_weights(config: Mapping[str, Any], trains_segmenter: bool) -> None:
    """Weight files the config names must exist before any job starts (an instance's: check_methods).

    ImageNet weights without an ``init_path`` are looked up in the torch hub cache of the machine that
    trains, which may not be this one, so only named files are checked here.
    """
    pretrained = config["clip"].get("pretrained")
    if config["clip"]["model"] != "demo" and pretrained and looks_like_path(pretrained) \
            and not Path(pretrained).is_file():
        raise ConfigError(f"clip.pretrained: file not found: {pretrained}")
    if not trains_segmenter:
        return
    train = (config.get("segmenter") or {}).get("train") or {}
    init, init_path = train.get("init", "imagenet"), train.get("init_path")
    if init_path and not Path(init_path).is_file():
        raise ConfigError(f"segmenter.train.init_path: file not found: {init_path}")
    if init == "coco" and not init_path:
        raise ConfigError("segmenter.train.init_path is required for init 'coco' (deeplab-pytorch's COCO-init "
                          "checkpoint; it is never downloaded)")


# Settings of the resources section that are no rule's name.
RESOURCE_SETTINGS = ("gpu_rules_use_gpu", "threads_per_job")


def check_resource_keys(resources: Mapping[str, Any], rules: set[str]) -> None:
    """Every other key of the config's resources section must name a rule that reads its figures."""
    unknown = sorted(set(resources) - set(RESOURCE_SETTINGS) - rules)
    if unknown:
        raise ConfigError(f"resources.{unknown[0]}: no rule of this workflow is named {unknown[0]!r} "
                          f"(rules with resources: {', '.join(sorted(rules))})")


def check_oracles(oracles: set[str], methods: Mapping[str, Any], cam_eval_splits: list[str] | None) -> None:
    """gt_select needs ground truth to choose on and a threshold to choose (a label-unary recipe)."""
    for name in sorted(oracles):
        if not cam_eval_splits:
            raise ConfigError(f"methods.{name}.gt_select needs splits.cam_eval (ground truth to choose the threshold on)")
        if methods[name]["pseudo_masks"]["crf"].get("mode") != "label_unary":
            raise ConfigError(f"methods.{name}.gt_select chooses the label-unary background threshold; "
                              "its pseudo_masks.crf.mode must be label_unary")


def code_not_run(dataset_kind: str, clip_model: str) -> tuple[str, ...]:
    """Subpackages of wsss whose code no job of this run executes, left out of the rules' code digests.

    The demo world's code (``wsss/demo``) runs only in runs of the demo dataset or the demo CLIP; every
    other run leaves it out, so editing it reruns nothing on real data.
    """
    return () if dataset_kind == "demo" or clip_model == "demo" else ("demo",)


def dataset_settings(config: Mapping[str, Any], out_dir: str) -> dict[str, Any]:
    """The dataset section with derived values filled in (the demo world's root lives under results/)."""
    dataset = dict(config["dataset"])
    if dataset["kind"] == "demo":
        dataset["root"] = f"{out_dir}/demo_world"
    return dataset


def count_images(config: Mapping[str, Any], dataset: Mapping[str, Any], split: str) -> int:
    """Number of manifest rows of a split, known before any rule runs (no checkpoints needed)."""
    if dataset["kind"] == "demo":
        if split not in _DEMO_SPLITS:
            raise ConfigError(f"the demo world has no split {split!r} (it has {sorted(_DEMO_SPLITS)})")
        return int(config["demo_world"][_DEMO_SPLITS[split]])
    count = len(split_ids(dataset, split))
    if count == 0:
        raise ConfigError(f"dataset: split {split!r} lists no images ({split_source(dataset, split)})")
    return count


def shards_of(config: Mapping[str, Any], dataset: Mapping[str, Any], split: str) -> list[str]:
    """Shard names of a split at the configured shard size."""
    return shard_names(count_images(config, dataset, split), config["shard_size"])
