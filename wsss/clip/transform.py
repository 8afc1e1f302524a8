"""CLIP-ES image preprocessing: bicubic resize to a patch multiple, RGB, ToTensor + Normalize."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, get_model_preprocess_cfg
from PIL import Image

from wsss.images import decode_image

__all__ = ["image_stats", "resize_to_patch_multiple", "image_to_tensor", "preprocess_image", "preprocess_file",
           "IMAGENET_MEAN_255", "IMAGENET_STD_255", "normalised_square"]

# ImageNet statistics on the 0-255 scale (what ExCEL feeds CLIP, and PAR's resized input)
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def image_stats(model: CLIP | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation (mean, std) from the model's preprocess config, defaulting to OpenAI's."""
    if model is not None:
        cfg = get_model_preprocess_cfg(model)
        if cfg.get("mean") is not None and cfg.get("std") is not None:
            return tuple(cfg["mean"]), tuple(cfg["std"])
    return tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)


def resize_to_patch_multiple(image: Image.Image, patch: int, scale: float = 1.0) -> Image.Image:
    """PIL bicubic resize to (ceil(s*H/p)*p, ceil(s*W/p)*p) in the image's own mode (before RGB conversion).

    scale 1 is CLIP-ES's native-size input; other scales resize in the same single bicubic step.
    """
    if patch <= 0:
        raise ValueError(f"patch must be positive, got {patch}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    w, h = image.size
    new_h, new_w = int(math.ceil(h * scale / patch) * patch), int(math.ceil(w * scale / patch) * patch)
    # always resize, even to the same size, as the reference's torchvision Resize does
    return image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)


def image_to_tensor(
    image: Image.Image,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> torch.Tensor:
    """RGB-convert a PIL image and normalise it like torchvision ToTensor + Normalize: (3, H, W) float32."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    # A uint8 channel has 256 possible values: run ToTensor + Normalize's float32 ops ((x / 255 - mean) / std)
    # on those, then look every pixel up. Bit-identical to the elementwise version, and a single cheap
    # single-threaded pass over the image instead of several multi-threaded ones.
    levels = torch.arange(256, dtype=torch.float32).div(255)
    m = torch.as_tensor(mean, dtype=torch.float32)[:, None]
    s = torch.as_tensor(std, dtype=torch.float32)[:, None]
    table = levels[None, :].sub(m).div(s).expand(3, -1).numpy()  # (3, 256)
    return torch.from_numpy(np.stack([table[c][arr[:, :, c]] for c in range(3)]))


def preprocess_image(
    image: Image.Image,
    patch: int,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    scale: float = 1.0,
) -> torch.Tensor:
    """CLIP-ES preprocessing: bicubic resize (by scale) to a patch multiple, then RGB, then normalise."""
    return image_to_tensor(resize_to_patch_multiple(image, patch, scale), mean, std)


def preprocess_file(
    path: str | os.PathLike,
    patch: int,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    scale: float = 1.0,
) -> torch.Tensor:
    """CLIP-ES preprocessing of an image file, decoded by the pipeline's one decoder (the CRF's pixels)."""
    return preprocess_image(Image.fromarray(decode_image(path)), patch, mean, std, scale)


def normalised_resize(image: np.ndarray, size: tuple[int, int], mean: Sequence[float] = IMAGENET_MEAN_255,
                      std: Sequence[float] = IMAGENET_STD_255) -> torch.Tensor:
    """(3, h, w): a (H, W, 3) 0-255 RGB image normalised first, then resized bilinearly to ``size`` without
    antialias, as ExCEL's reference does."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return torch.nn.functional.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False,
                                           antialias=False)[0]


def normalised_square(image: np.ndarray, size: int, mean: Sequence[float] = IMAGENET_MEAN_255,
                      std: Sequence[float] = IMAGENET_STD_255) -> torch.Tensor:
    """(3, size, size): ``normalised_resize`` to a square (the aspect ratio is not kept)."""
    return normalised_resize(image, (size, size), mean, std)
