"""Pixel-adaptive refinement (PAR, as in ToCo, WeCLIP and ExCEL): class maps propagated between neighbouring
pixels of similar colour, a refiner of any kind's maps beside the dense CRF."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ParConfig", "neighbour_offsets", "par_affinity", "par_refine"]


@dataclass(frozen=True)
class ParConfig:
    """PAR's settings (the reference's): dilations of the 8-neighbourhoods, iterations, and the two scales."""

    iterations: int = 20
    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    w_image: float = 0.3
    w_pos: float = 0.01


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(dy, dx) of the 8 neighbours at each dilation."""
    ring = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    return [(d * dy, d * dx) for d in dilations for dy, dx in ring]


def _shifted(x: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(C, H, W) -> (n, C, H, W): the value at each pixel's neighbour (dy, dx), replicate padding at the borders."""
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x[None], (pad, pad, pad, pad), mode="replicate")[0]
    h, w = x.shape[-2:]
    return torch.stack([padded[:, pad + dy: pad + dy + h, pad + dx: pad + dx + w] for dy, dx in offsets])


def par_affinity(image: torch.Tensor, config: ParConfig = ParConfig()) -> torch.Tensor:
    """(n, H, W) propagation weights of a (3, H, W) float image: softmax over the neighbours of the colour
    term -(|I_n - I_0| / std_n(I) / w_image)^2 (mean over channels), plus w_pos times the softmax of the
    distance term -(d_n / std_n(d) / w_image)^2."""
    offsets = neighbour_offsets(config.dilations)
    image = image.float()
    neighbours = _shifted(image, offsets)  # (n, 3, H, W)
    spread = neighbours.std(dim=0, keepdim=True)  # unbiased, over the neighbours, per channel and pixel
    colour = -((neighbours - image[None]).abs() / (spread + 1e-8) / config.w_image) ** 2
    colour = torch.softmax(colour.mean(dim=1), dim=0)
    distance = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=torch.float32)
    position = torch.softmax(-(distance / (distance.std() + 1e-8) / config.w_image) ** 2, dim=0)
    return colour + config.w_pos * position[:, None, None]


def par_refine(maps: torch.Tensor, image: torch.Tensor, config: ParConfig = ParConfig()) -> torch.Tensor:
    """``config.iterations`` rounds of maps <- sum_n affinity_n * maps(neighbour n), on (C, H, W) maps."""
    affinity = par_affinity(image, config)[:, None]  # (n, 1, H, W)
    offsets = neighbour_offsets(config.dilations)
    maps = maps.float()
    for _ in range(config.iterations):
        maps = (affinity * _shifted(maps, offsets)).sum(dim=0)
    return maps
