"""Segmentation losses: cross-entropy ignoring low-confidence pixels (255), balanced CE, MSC sum."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
LOSSES = ("ce", "balanced_ce")


def _pixel_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Per-pixel CE (N, H, W) in float32, exactly 0 (and gradient-free) where labels == ignore_index."""
    if (
        logits.dim() != 4
        or labels.dim() != 3
        or logits.shape[0] != labels.shape[0]
        or logits.shape[2:] != labels.shape[1:]
    ):
        raise ValueError(
            f"logits (N,C,H,W) and labels (N,H,W) disagree: {tuple(logits.shape)} vs {tuple(labels.shape)}"
        )
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="none")


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean CE over pixels whose label != ignore_index; 0 (not NaN) when every pixel is ignored.

    This is the confidence-guided loss of CLIP-ES: pseudo-mask pixels with CRF confidence < 0.95 carry
    255 and drop out of both the sum and the count.
    """
    per = _pixel_ce(logits, labels, ignore_index)
    count = (labels != ignore_index).sum().clamp(min=1)
    return per.sum() / count


def balanced_ce(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, background: int = 0
) -> torch.Tensor:
    """(mean CE over background pixels + mean CE over foreground pixels) / 2, pooled over the batch.

    Pixels labelled ignore_index count in neither part. If the batch has no background (or no foreground)
    pixel, the loss is the mean over the part that exists; with no valid pixel at all it is 0.
    """
    per = _pixel_ce(logits, labels, ignore_index)
    bg = labels == background
    fg = (labels != background) & (labels != ignore_index)
    total = per.new_zeros(())
    parts = 0
    for mask in (bg, fg):
        n = int(mask.sum())
        if n:
            total = total + (per * mask).sum() / n
            parts += 1
    if parts == 0:
        return per.sum() * 0.0  # keeps the graph, zero gradient
    return total / parts


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of (N, H, W) integer labels to `size`, sampling pixel centres like PIL NEAREST."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    out = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")
    return out[:, 0].long()


def segmentation_loss(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    kind: str = "ce",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Loss of one logit map or the sum over MSC outputs, labels nearest-resized to each output's size."""
    if kind == "ce":
        fn = ce_loss
    elif kind == "balanced_ce":
        fn = balanced_ce
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    if torch.is_tensor(outputs):
        outputs = [outputs]
    total = None
    for logit in outputs:
        term = fn(logit, resize_labels(labels, logit.shape[-2:]), ignore_index=ignore_index)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no model outputs to compute a loss on")
    return total
