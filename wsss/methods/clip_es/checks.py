"""Checks of a CLIP-ES instance's settings while the workflow is parsed, before any job starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def check_instance(name: str, method: Mapping[str, Any], dataset_kind: str) -> None:
    """Settings the schema cannot express; raise ValueError naming the key."""
    template = method["text"]["template"]
    if template != "auto" and "{}" not in template:
        raise ValueError(f"methods.{name}.text.template must contain '{{}}' or be 'auto', got {template!r}")
    layers = method["cam"]["attn_layers"]
    if layers[0] is not None and layers[1] is not None and layers[0] >= layers[1] and layers[1] > 0:
        raise ValueError(f"methods.{name}.cam.attn_layers {layers} selects no block")


def instance_warnings(name: str, method: Mapping[str, Any], native_bf16: bool) -> list[str]:
    """bf16 CAMs on a CPU without native bf16 run emulated: slow, and never faithful."""
    if native_bf16 or method["cam"]["precision"] != "bf16":
        return []
    return [f"methods.{name}.cam.precision: bf16 runs emulated on this CPU (no avx512_bf16, amx_bf16 or Arm bf16): "
            "about ten times slower than fp32 in the CAM step, and never faithful; use fp32 or faithful on this CPU "
            "(bf16 is fast on CUDA and on CPUs with native bf16)"]
