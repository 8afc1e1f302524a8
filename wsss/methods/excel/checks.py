"""Checks of an ExCEL instance's settings while the workflow is parsed, before any job starts: the descriptor
JSON or released bank it names exists (and matches its sha256), and the run manifest records it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wsss.methods.excel import DEMO_DESCRIPTORS, bank_file, descriptor_file


def check_instance(name: str, method: Mapping[str, Any], dataset_kind: str) -> None:
    """Files the instance names and settings the schema cannot express; raise ValueError naming the key."""
    descriptor_file(name, method, dataset_kind)
    bank_file(name, method)
    if "{}" not in method["text"]["template"]:
        raise ValueError(f"methods.{name}.text.template must contain '{{}}', got {method['text']['template']!r}")
    if method["cam"]["input_size"] % 8:
        raise ValueError(f"methods.{name}.cam.input_size must be a multiple of the patch size")


def named_files(name: str, method: Mapping[str, Any]) -> dict[str, str]:
    """Config key -> the descriptor JSON or released bank a user gave (the demo's own set is package code)."""
    attributes = method["attributes"]
    if not attributes["enabled"]:
        return {}
    if attributes["bank"]["source"] == "file":
        return {f"methods.{name}.attributes.bank.path": attributes["bank"]["path"]}
    given = attributes.get("descriptors")
    return {f"methods.{name}.attributes.descriptors": given} if given and given != str(DEMO_DESCRIPTORS) else {}
