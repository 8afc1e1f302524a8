"""Class vocabularies: label names, prompt names (with synonyms) and background words per dataset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wsss.datasets import read_class_list


@dataclass(frozen=True)
class Vocabulary:
    """Label names (index i is label value i+1), the names written into prompts, and background words."""

    classes: tuple[str, ...]
    prompt_names: tuple[str, ...]
    background_words: tuple[str, ...]


def dataset_vocabulary(config: Mapping[str, Any], dataset: Mapping[str, Any]) -> Vocabulary:
    """Resolve a dataset's vocabulary; text.class_prompts / text.background_words override the defaults."""
    kind = dataset["kind"]
    if kind == "demo":
        from wsss.demo_world import DEMO_BACKGROUNDS, DEMO_CLASSES

        classes, prompts, background = list(DEMO_CLASSES), list(DEMO_CLASSES), list(DEMO_BACKGROUNDS)
    elif kind in ("voc", "coco"):
        from wsss.text_features import load_class_lists

        lists = load_class_lists()
        classes, prompts, background = lists[f"{kind}_classes"], lists[f"{kind}_synonyms"], lists[f"{kind}_bg"]
    elif kind == "custom":
        classes = read_class_list(dataset["class_list"])
        prompts, background = list(classes), []
    else:
        raise ValueError(f"dataset.kind: unknown dataset kind {kind!r}")
    text = config.get("text", {})
    prompts = text.get("class_prompts") or prompts
    background = text.get("background_words", background)
    if len(prompts) != len(classes):
        raise ValueError(f"text.class_prompts has {len(prompts)} entries for {len(classes)} classes")
    if kind == "custom" and not background:
        raise ValueError("text.background_words is required for a custom dataset (e.g. ground, sky, wall, water)")
    return Vocabulary(tuple(classes), tuple(prompts), tuple(background))
