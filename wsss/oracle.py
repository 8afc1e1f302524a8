"""Oracle settings: values chosen on ground truth (gt_select), stored as JSON for the rules that use them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from wsss.atomic import write_text_atomic

__all__ = ["read_threshold", "write_threshold"]


def write_threshold(path: str | Path, threshold: float, swept: Mapping[float, float], splits: Sequence[str]) -> None:
    """Store a background threshold chosen on ground truth, with the sweep it came from."""
    record = {"threshold": float(threshold), "oracle": True, "splits": list(splits),
              "miou_by_threshold": {f"{t:.2f}": v for t, v in swept.items()}}
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def read_threshold(path: str | Path) -> float:
    """The threshold a :func:`write_threshold` file holds."""
    return float(json.loads(Path(path).read_text())["threshold"])
