"""Per-map scaling shared by the CAM steps of every CLIP kind (GradCAM, CAA)."""

from __future__ import annotations

import torch

__all__ = ["minmax_normalize"]


def minmax_normalize(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-map min-max over the last two dims: (x - min) / (max(x - min) + eps), like scale_cam_image."""
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / (x.amax(dim=(-2, -1), keepdim=True) + eps)
