"""Class vocabularies: label names, prompt names (with synonyms) and background words per dataset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from wsss.datasets import read_class_list


@dataclass(frozen=True)
class Vocabulary:
    """Label names (index i is label value i+1), the names written into prompts, and background words."""

    classes: tuple[str, ...]
    prompt_names: tuple[str, ...]
    background_words: tuple[str, ...]


def dataset_classes(dataset: Mapping[str, Any]) -> tuple[str, ...]:
    """A dataset's label names (index i is label value i+1); no prompt settings needed."""
    kind = dataset["kind"]
    if kind == "demo":
        from wsss.demo.world import DEMO_CLASSES

        return tuple(DEMO_CLASSES)
    if kind in ("voc", "coco"):
        return tuple(load_class_lists()[f"{kind}_classes"])
    if kind == "custom":
        return tuple(read_class_list(dataset["class_list"]))
    raise ValueError(f"dataset.kind: unknown dataset kind {kind!r}")


def dataset_vocabulary(dataset: Mapping[str, Any], text: Mapping[str, Any] | None = None) -> Vocabulary:
    """Resolve a dataset's vocabulary; a method's text.class_prompts / text.background_words override the defaults."""
    kind = dataset["kind"]
    classes = list(dataset_classes(dataset))
    if kind == "demo":
        from wsss.demo.world import DEMO_BACKGROUNDS

        prompts, background = list(classes), list(DEMO_BACKGROUNDS)
    elif kind in ("voc", "coco"):
        lists = load_class_lists()
        prompts, background = lists[f"{kind}_synonyms"], lists[f"{kind}_bg"]
    else:
        prompts, background = list(classes), []
    text = text or {}
    prompts = text.get("class_prompts") or prompts
    background = text.get("background_words", background)
    if len(prompts) != len(classes):
        raise ValueError(f"text.class_prompts has {len(prompts)} entries for {len(classes)} classes")
    if kind == "custom" and not background:
        raise ValueError("text.background_words is required for a custom dataset (e.g. ground, sky, wall, water)")
    return Vocabulary(tuple(classes), tuple(prompts), tuple(background))


def load_class_lists() -> dict[str, list[str]]:
    """All packaged class, synonym and background lists (wsss/data/class_lists.yaml) by name."""
    text = resources.files("wsss.data").joinpath("class_lists.yaml").read_text(encoding="utf-8")
    lists = yaml.safe_load(text)
    if not isinstance(lists, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in lists.values()
    ):
        raise ValueError("wsss/data/class_lists.yaml must map list names to lists of strings")
    return lists


def get_class_list(name: str) -> list[str]:
    """One packaged list by name (e.g. voc_synonyms, coco_bg); ValueError naming the choices otherwise."""
    lists = load_class_lists()
    if name not in lists:
        raise ValueError(f"unknown class list {name!r}; available: {sorted(lists)}")
    return list(lists[name])
