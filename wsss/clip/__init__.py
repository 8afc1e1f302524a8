"""CLIP machinery shared by the method kinds: loading (``factory``), preprocessing (``transform``), the image
token path (``transformer``), text features, maps and class-aware attention affinity (``affinity``)."""

from __future__ import annotations

import os

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def looks_like_path(pretrained: str) -> bool:
    """Whether a ``pretrained`` value names a weights file rather than an open_clip tag."""
    return "/" in pretrained or os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES)
