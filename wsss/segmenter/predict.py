"""Test-time prediction: full image, optional extra scales and horizontal flip, class probabilities.

Fusion rule. deeplab-pytorch tests a DeepLabV2_ResNet101_MSC model: the MSC wrapper fuses its
internal scales {1, 0.5, 0.75} by max at logit resolution, the fused logits are upsampled bilinearly to
the image size and soft-maxed. `predict_probs` with its defaults (scales=(1.0,), flip=False) on an MSC
model reproduces exactly that. Extra test-time scales/flips given here are combined differently: the
logits of each pass (already MSC-fused inside the model, if it is an MSC model) are upsampled to the image
size and **averaged**, then soft-maxed once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss.segmenter.augment import normalise


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameter-free module)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    image_rgb: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    normalisation: str = "bgr_mean",
) -> torch.Tensor:
    """Mean over scales (and flips) of the logits upsampled to the image size: float32 (C, H, W) on CPU."""
    if not scales:
        raise ValueError("scales must contain at least one scale")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        x = normalise(image_rgb, normalisation)[None].to(device)
        h, w = x.shape[-2:]
        total, n = None, 0
        for s in scales:
            xs = (
                x
                if float(s) == 1.0
                else F.interpolate(
                    x, size=(max(int(h * s), 1), max(int(w * s), 1)), mode="bilinear", align_corners=False
                )
            )
            for flipped in ((False, True) if flip else (False,)):
                logits = model(xs.flip(-1) if flipped else xs)
                if isinstance(logits, (list, tuple)):  # defensive: a model still returning MSC lists
                    logits = logits[-1]
                if flipped:
                    logits = logits.flip(-1)
                logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
                total = logits if total is None else total + logits
                n += 1
        return (total / n)[0].cpu()
    finally:
        model.train(was_training)


def predict_probs(
    model: nn.Module,
    image_rgb: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    normalisation: str = "bgr_mean",
) -> np.ndarray:
    """Softmax of `predict_logits`: float32 (C, H, W) probabilities for a uint8 RGB (H, W, 3) image."""
    logits = predict_logits(model, image_rgb, scales=scales, flip=flip, normalisation=normalisation)
    return torch.softmax(logits, dim=0).numpy().astype(np.float32, copy=False)


def predict_labels(
    model: nn.Module,
    image_rgb: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    normalisation: str = "bgr_mean",
) -> np.ndarray:
    """Arg-max label map uint8 (H, W) (no CRF)."""
    logits = predict_logits(model, image_rgb, scales=scales, flip=flip, normalisation=normalisation)
    return logits.argmax(0).numpy().astype(np.uint8)
