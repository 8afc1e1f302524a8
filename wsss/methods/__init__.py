"""Method kinds and their named instances.

A method kind turns images and their labels into CAM shards (the method contract, docs/hdf5-layout.md);
the shared tail (CRF, segmenter, evaluation) does the rest. Each kind is a subpackage here, its
``DEFAULTS`` (the paper's settings) in ``__init__`` and one module per step, plus a rule file
``rules/methods/<kind>.smk``. A config's ``methods:`` maps instance names to a kind plus what
differs from its defaults.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from wsss.methods import clip_es, semples

KINDS: dict[str, Mapping[str, Any]] = {"clip_es": clip_es.DEFAULTS, "semples": semples.DEFAULTS}

# Folders of results/<run>/ that the shared upstream stages own; an instance cannot take their name.
RESERVED_NAMES = frozenset({"benchmarks", "clip", "demo_world", "logs", "manifests", "tables", "text", "training"})


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, mappings merged key by key, everything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_methods(instances: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every instance's full settings: its kind's defaults updated by what the instance states."""
    resolved = {}
    for name, instance in instances.items():
        if name in RESERVED_NAMES:
            raise ValueError(f"methods.{name}: the name is taken by a shared output folder ({sorted(RESERVED_NAMES)})")
        kind = instance.get("kind")
        if kind not in KINDS:
            raise ValueError(f"methods.{name}.kind: unknown method kind {kind!r} (known: {sorted(KINDS)})")
        resolved[name] = merged(KINDS[kind], instance)
    return resolved


def instances_of(methods: Mapping[str, Mapping[str, Any]], kind: str) -> list[str]:
    """Names of the resolved instances of one kind, sorted."""
    return sorted(name for name, settings in methods.items() if settings["kind"] == kind)
