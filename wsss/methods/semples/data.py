"""SemPLeS training images: a manifest split as (augmented image, multi-hot labels), seeded per sample."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from wsss.checkpoints import mix_seed
from wsss.datasets import read_manifest
from wsss.images import decode_image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LabelledImages", "training_transform", "multi_hot", "load_rgb"]

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as an RGB PIL image, decoded by the pipeline's one decoder."""
    return Image.fromarray(decode_image(path))


def multi_hot(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Float multi-hot vector of the present classes."""
    vector = torch.zeros(num_classes)
    vector[list(labels)] = 1.0
    return vector


def posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """PIL posterize where 0 bits gives a black image, as the Pillow of the release did (Pillow 11 rejects 0)."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep < 1:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def _with_old_posterize(transform: Callable) -> Callable:
    """Route timm RandAugment's posterize ops through :func:`posterize` (magnitude noise can ask for 0 bits)."""
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if op.name.startswith("Posterize"):
                op.aug_fn = posterize
    return transform


def training_transform(augment: Mapping[str, Any], strong: bool) -> Callable[[Image.Image], torch.Tensor]:
    """timm's ImageNet training transform (strong: RandAugment + random erasing) or crop and flip only."""
    return _with_old_posterize(create_transform(
        input_size=int(augment["crop_size"]),
        is_training=True,
        scale=tuple(augment["crop_scale"]),
        hflip=0.5,
        # timm ignores colour jitter when RandAugment is on (stages a/c); stage b has neither
        color_jitter=None,
        auto_augment=augment["randaugment"] if strong else None,
        interpolation="bicubic",
        re_prob=float(augment["random_erasing"]) if strong else 0.0,
        re_mode="pixel",
        re_count=1,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ))


class LabelledImages(torch.utils.data.Dataset):
    """Images of a manifest that have labels, each drawn with augmentation seeded by (seed, epoch, index).

    Seeding per sample makes every epoch's images independent of the data-loader's worker count and of
    where a resumed run restarts.
    """

    def __init__(self, manifest_path: str | Path, num_classes: int, transform: Callable, seed: int) -> None:
        table = read_manifest(manifest_path)
        table = table[(table["skip_reason"] == "") & (table["labels"].map(len) > 0)]
        if not len(table):
            raise ValueError(f"{manifest_path}: no labelled images to train on")
        self.paths = list(table["image_path"])
        self.labels = [multi_hot(labels, num_classes) for labels in table["labels"]]
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample_seed = mix_seed(self.seed, self.epoch, index)
        # timm's transforms draw from Python's and torch's global generators
        random.seed(sample_seed)
        np.random.seed(sample_seed % 2**32)
        torch.manual_seed(sample_seed)
        return self.transform(load_rgb(self.paths[index])), self.labels[index]


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch."""
    generator = torch.Generator().manual_seed(mix_seed(seed, epoch, 0x5E4))
    return torch.randperm(size, generator=generator).tolist()
