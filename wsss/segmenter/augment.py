"""Input normalisation and the DeepLab training augmentation (random scale, pad, random crop, flip)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss.segmenter.losses import IGNORE_INDEX

# deeplab-pytorch / Caffe: BGR channel order, minus the per-channel mean, no division by a std
BGR_MEAN = (104.008, 116.669, 122.675)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATIONS = ("bgr_mean", "rgb_imagenet")


def normalise(image_rgb: np.ndarray | torch.Tensor, mode: str = "bgr_mean") -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W) network input.

    `bgr_mean`: channels reordered to BGR, minus BGR_MEAN (0..255 range, as deeplab-pytorch / Caffe).
    `rgb_imagenet`: RGB / 255, minus IMAGENET_MEAN, divided by IMAGENET_STD (torchvision weights).
    In both modes the dataset mean maps to 0, so zero-padding a normalised image pads it with the mean.
    """
    img = torch.as_tensor(np.ascontiguousarray(image_rgb) if isinstance(image_rgb, np.ndarray) else image_rgb)
    if img.dim() != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {tuple(img.shape)}")
    img = img.permute(2, 0, 1).to(torch.float32)
    if mode == "bgr_mean":
        return img.flip(0) - torch.tensor(BGR_MEAN).view(3, 1, 1)
    if mode == "rgb_imagenet":
        return (img / 255.0 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {mode!r}")


def denormalise(image: torch.Tensor, mode: str = "bgr_mean") -> np.ndarray:
    """Inverse of `normalise` (float (3, H, W) -> uint8 RGB (H, W, 3)), for inspection and tests."""
    if mode == "bgr_mean":
        rgb = (image + torch.tensor(BGR_MEAN).view(3, 1, 1)).flip(0)
    elif mode == "rgb_imagenet":
        rgb = (image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) * 255.0
    else:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {mode!r}")
    return rgb.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def resize_pair(image: torch.Tensor, label: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize image (3, H, W) bilinearly (cv2 INTER_LINEAR-like, no antialias) and label (H, W) by nearest."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, label
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    # nearest-exact samples pixel centres, like PIL's NEAREST used by deeplab-pytorch
    lab = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(label.dtype)
    return img, lab


def pick_scale(
    generator: torch.Generator, scales: Sequence[float] = (), scale_range: Sequence[float] | None = None
) -> float:
    """One scale factor: uniform in `scale_range` if given, else a uniform choice from `scales` (1.0 if empty)."""
    if scale_range is not None:
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        return lo + (hi - lo) * float(torch.rand((), generator=generator))
    if not scales:
        return 1.0
    return float(scales[int(torch.randint(len(scales), (), generator=generator))])


def augment(
    image: torch.Tensor,
    label: torch.Tensor,
    *,
    crop: int,
    generator: torch.Generator,
    scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
    scale_range: Sequence[float] | None = None,
    flip: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """deeplab-pytorch training augmentation on a normalised image (3, H, W) and its label (H, W).

    Random scale (size = int(H*s), int(W*s)), pad bottom/right up to `crop` (image with 0 = the mean,
    label with `ignore_index`), random `crop` x `crop` window, random horizontal flip. All randomness
    comes from `generator`, in the order scale, crop top, crop left, flip.
    """
    if image.dim() != 3 or label.dim() != 2 or image.shape[1:] != label.shape:
        raise ValueError(f"image (3,H,W) and label (H,W) disagree: {tuple(image.shape)} vs {tuple(label.shape)}")
    if crop < 1:
        raise ValueError(f"crop must be a positive size, got {crop}")
    h, w = label.shape
    s = pick_scale(generator, scales, scale_range)
    nh, nw = max(int(h * s), 1), max(int(w * s), 1)
    image, label = resize_pair(image, label, (nh, nw))

    pad_h, pad_w = max(crop - nh, 0), max(crop - nw, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=ignore_index)
    h, w = label.shape
    top = int(torch.randint(h - crop + 1, (), generator=generator))
    left = int(torch.randint(w - crop + 1, (), generator=generator))
    image = image[:, top : top + crop, left : left + crop]
    label = label[top : top + crop, left : left + crop]
    if flip and float(torch.rand((), generator=generator)) < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()
