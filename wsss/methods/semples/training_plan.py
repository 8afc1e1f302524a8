"""The SemPLeS training stages a run needs: their folder keys, model files and the settings each job reads.

Built once while the workflow is parsed (``rules/methods/semples.smk``); no job imports it. A stage's
folder ``<root>/<stage>/<key>/`` is shared by every instance whose settings up to that stage are equal
(``stage_keys``), and its job reads the settings of the first such instance by name: they all agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wsss.methods.semples import (
    class_names,
    class_tokens,
    imported_generator,
    imported_phase1,
    stage_keys,
    stage_settings,
)
from wsss.methods.semples.checks import phase1_digest


@dataclass(frozen=True)
class TrainingPlan:
    """The training stages of a run's SemPLeS instances."""

    root: str  # results/<run>/training/semples
    methods: Mapping[str, Mapping[str, Any]]  # the SemPLeS instances' resolved settings
    keys: Mapping[str, Mapping[str, str]]  # instance -> stage -> folder key
    dataset_kind: str
    classes: tuple[str, ...]

    @classmethod
    def build(cls, methods: Mapping[str, Mapping[str, Any]], root: str, split: str | None, dataset_kind: str,
              classes: Sequence[str]) -> TrainingPlan:
        """Key every instance's stages by its settings, the training split and the classes (an imported phase-1
        model by its file's sha256, checked here)."""
        data = {"split": split, "classes": list(classes)}
        keys = {name: stage_keys(method, data, phase1_digest(name, method)) for name, method in methods.items()}
        return cls(root, methods, keys, dataset_kind, tuple(classes))

    def stage_keys(self, stage: str) -> set[str]:
        """The keys of one stage over all instances (the stage's folders this run needs)."""
        return {keys[stage] for keys in self.keys.values() if stage in keys}

    def owner(self, stage: str, key: str) -> str:
        """The first instance (by name) whose ``stage`` has this key."""
        return next(name for name in sorted(self.keys) if self.keys[name].get(stage) == key)

    def settings(self, stage: str, key: str) -> dict[str, Any]:
        """The settings a stage's job reads (``stage_settings``)."""
        return stage_settings(self.methods[self.owner(stage, key)], stage)

    def model(self, stage: str, name: str) -> str:
        """The model file of one of an instance's stages (phase 1: the imported file, if the instance names one)."""
        if stage == "phase1" and imported_phase1(self.methods[name]):
            return imported_phase1(self.methods[name])
        return f"{self.root}/{stage}/{self.keys[name][stage]}/model.pt"

    def start(self, stage: str, key: str, start: str) -> str:
        """The model file a stage starts from: stage ``start`` of the instance that owns this key."""
        return self.model(start, self.owner(stage, key))

    def prompts(self, key: str) -> str:
        """The learned prompts stage c (refine) with this key reads."""
        return f"{self.root}/prompts/{self.keys[self.owner('refine', key)]['prompts']}/prompts.pt"

    def class_names(self, stage: str, key: str) -> list[str]:
        """The class names in a stage's CLIP text."""
        return class_names(self.methods[self.owner(stage, key)], self.dataset_kind, self.classes)

    def class_tokens(self, stage: str, key: str) -> dict[str, Any]:
        """WeakTr's class tokens of a stage's generator (how many, and each dataset class's slot)."""
        return class_tokens(self.methods[self.owner(stage, key)], self.dataset_kind, self.classes)

    def imported_generator(self, stage: str, key: str) -> dict[str, Any] | None:
        """The geometry an imported phase-1 model loads into (None: phase 1 is trained here)."""
        return imported_generator(self.methods[self.owner(stage, key)], self.dataset_kind, self.classes)

    def critic_files(self, stage: str, key: str, demo_clip: str) -> list[str]:
        """The demo CLIP checkpoint when the stage's critic is the demo CLIP (phase 1: only to start from it)."""
        method = self.methods[self.owner(stage, key)]
        if stage == "phase1" and method["weaktr"]["init"] != "critic":
            return []
        return [demo_clip] if method["critic"]["model"] == "demo" else []

    def deit_files(self, key: str) -> list[str]:
        """The local DeiT checkpoint phase 1 starts from (``weaktr.init`` deit)."""
        weaktr = self.methods[self.owner("phase1", key)]["weaktr"]
        return [weaktr["checkpoint"]] if weaktr["init"] == "deit" else []
