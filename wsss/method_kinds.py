"""Method kinds and their named instances.

A method kind turns images and their labels into CAM shards (the method contract, docs/hdf5-layout.md);
the shared tail (CRF, segmenter, evaluation) does the rest. Each kind is a subpackage
``wsss/methods/<kind>/``, its ``DEFAULTS`` (the paper's settings) in ``__init__`` and one module per
step, plus a rule file ``rules/methods/<kind>.smk``. A config's ``methods:`` maps instance names to a
kind plus what differs from its defaults.

Registering a kind is its line in ``KINDS``. The registry lives outside ``wsss/methods/`` and imports
the kinds by name, only when their defaults are needed (at parse time): a job that runs one kind's
code imports no other kind, so registering or editing a kind changes no other kind's code digest.

A kind may also have a module ``checks`` with parse-time hooks, each optional:
``check_instance(name, settings, dataset_kind)`` raises ValueError naming the key of a setting that cannot
work, ``instance_warnings(name, settings, native_bf16)`` returns warnings, and ``named_files(name, settings)``
maps config keys to the files the run manifest records.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

KINDS: tuple[str, ...] = ("clip_es", "semples", "excel")

# Folders of results/<run>/ that the shared upstream stages own; an instance cannot take their name.
RESERVED_NAMES = frozenset({"attributes", "benchmarks", "clip", "demo_world", "figures", "logs", "manifests", "tables",
                            "text", "training"})


def kind_defaults(kind: str) -> Mapping[str, Any]:
    """A registered kind's published defaults (``DEFAULTS`` of ``wsss.methods.<kind>``)."""
    return importlib.import_module(f"wsss.methods.{kind}").DEFAULTS


def kind_hook(kind: str, hook: str) -> Callable[..., Any] | None:
    """A parse-time function of a kind's ``checks`` module (``wsss.methods.<kind>.checks``), None if it has none."""
    module = f"wsss.methods.{kind}.checks"
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), hook, None)


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
        resolved[name] = merged(kind_defaults(kind_of(name, instance)), instance)
    return resolved


def kind_of(name: str, instance: Mapping[str, Any]) -> str:
    """An instance's kind, which must be registered."""
    kind = instance.get("kind")
    if kind not in KINDS:
        raise ValueError(f"methods.{name}.kind: unknown method kind {kind!r} (known: {sorted(KINDS)})")
    return kind


def instances_of(methods: Mapping[str, Mapping[str, Any]], kind: str) -> list[str]:
    """Names of the resolved instances of one kind, sorted."""
    return sorted(name for name, settings in methods.items() if settings["kind"] == kind)
