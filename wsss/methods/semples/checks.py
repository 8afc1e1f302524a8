"""Checks of a SemPLeS instance's settings while the workflow is parsed, before any job starts: the weight
files it names exist (and match their sha256), and the run manifest records them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsss.clip import looks_like_path
from wsss.digests import file_digest
from wsss.methods.semples import imported_phase1


def check_instance(name: str, method: Mapping[str, Any], dataset_kind: str) -> None:
    """Weight files the instance names must exist; raise ValueError naming the key."""
    weaktr, critic = method["weaktr"], method["critic"]
    imported = imported_phase1(method)
    if imported and not Path(imported).is_file():
        raise ValueError(f"methods.{name}.phase1.checkpoint: file not found: {imported}")
    # An imported phase 1 needs no DeiT start; its sha256 is checked where it is digested (phase1_digest).
    if weaktr["init"] == "deit" and not imported:
        path = weaktr["checkpoint"]
        if not path:
            raise ValueError(f"methods.{name}.weaktr.checkpoint: weaktr.init 'deit' needs a local DeiT-S checkpoint "
                             "(deit_small_patch16_224-cd65a155.pth); it is never downloaded")
        if not Path(path).is_file():
            raise ValueError(f"methods.{name}.weaktr.checkpoint: file not found: {path}")
    if critic["model"] == "demo":
        if dataset_kind != "demo":
            raise ValueError(f"methods.{name}.critic.model 'demo' needs the demo world (dataset.kind demo)")
    elif not critic.get("pretrained"):
        raise ValueError(f"methods.{name}.critic.pretrained is required for critic model {critic['model']!r}")
    elif looks_like_path(critic["pretrained"]) and not Path(critic["pretrained"]).is_file():
        raise ValueError(f"methods.{name}.critic.pretrained: file not found: {critic['pretrained']}")
    if "{}" not in method["text"]["template"]:
        raise ValueError(f"methods.{name}.text.template must contain '{{}}', got {method['text']['template']!r}")


def phase1_digest(name: str, method: Mapping[str, Any]) -> str | None:
    """SHA-256 of an instance's imported phase-1 model (``phase1.checkpoint``), checked against ``phase1.sha256``."""
    path = imported_phase1(method)
    if not path:
        return None
    if not Path(path).is_file():
        raise ValueError(f"methods.{name}.phase1.checkpoint: file not found: {path}")
    digest = file_digest(path)
    expected = method["phase1"]["sha256"]
    if expected and digest != expected.lower():
        raise ValueError(f"methods.{name}.phase1.sha256: {path} has sha256 {digest}, expected {expected}")
    return digest


def named_files(name: str, method: Mapping[str, Any]) -> dict[str, str]:
    """Config key -> each weight file the instance names (the run manifest records their sha256)."""
    named = {
        f"methods.{name}.weaktr.checkpoint": method["weaktr"].get("checkpoint"),
        f"methods.{name}.phase1.checkpoint": imported_phase1(method),
        f"methods.{name}.critic.pretrained": method["critic"].get("pretrained"),
    }
    return {key: path for key, path in named.items() if path}
