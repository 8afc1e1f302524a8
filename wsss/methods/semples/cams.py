"""SemPLeS CAM inference: multi-scale + flip PAR maps of the trained mask generator into the method contract."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsss.cam_shards import put_cams
from wsss.datasets import read_manifest, usable_rows
from wsss.h5store import set_image_order, write_stage
from wsss.methods.semples.data import IMAGENET_MEAN, IMAGENET_STD, load_rgb
from wsss.methods.semples.train import load_model, release_fp16
from wsss.methods.semples.weaktr import WeakTr, class_maps
from wsss.progress import progress
from wsss.shards import shard_rows

log = logging.getLogger(__name__)


def normalised_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) ImageNet-normalised tensor of an RGB image."""
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((array - mean) / std)[None]


def scaled(image: Image.Image, scale: float) -> Image.Image:
    """The image resized bicubically by ``scale`` (the release's multi-scale input)."""
    if scale == 1.0:
        return image
    width, height = image.size
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)


@torch.no_grad()
def multiscale_cams(model: WeakTr, image: Image.Image, keys: Sequence[int], scales: Sequence[float],
                    flip: bool, fp16: bool = False) -> np.ndarray:
    """(K, H, W) maps in [0, 1] of the present classes: PAR CAMs summed over scales and flips, min-max normalised.

    ``fp16`` runs the mask generator under CUDA fp16 autocast, as the release does; upsampling and sums are fp32.
    """
    device = next(model.parameters()).device
    width, height = image.size
    keys = torch.as_tensor(list(keys), dtype=torch.long, device=device)
    total = torch.zeros((len(keys), height, width), device=device)
    for scale in scales:
        batch = normalised_tensor(scaled(image, float(scale))).to(device)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            fine = class_maps(model.config, model(batch).fine_cam)[:, keys].float()
        full = F.interpolate(fine, size=(height, width), mode="bilinear", align_corners=False)
        total += full[0]
        if flip:
            total += full[1].flip(-1)  # un-flip the mirrored pass
    low = total.flatten(1).min(dim=1).values.view(-1, 1, 1)
    high = total.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return ((total - low) / (high - low + 1e-8)).cpu().numpy().astype(np.float32)


def run_cams(manifest_path: str | Path, shard: str, shard_size: int, model_path: str | Path,
             cam: Mapping[str, Any], out_path: str | Path, locking: Any = None, precision: str = "faithful") -> None:
    """Write one shard's SemPLeS CAMs (``cam`` at image resolution) in the method contract."""
    model = load_model(model_path)
    fp16 = release_fp16(precision, next(model.parameters()).device)
    table = shard_rows(read_manifest(manifest_path), shard, shard_size)
    table, skipped = usable_rows(table)
    params = {"cam": dict(cam), "precision": precision}
    with write_stage(out_path, "cams", params, inputs=[manifest_path, model_path], locking=locking,
                     skipped=skipped) as out:
        for row in progress(table.itertuples(index=False), total=len(table), desc=f"SemPLeS CAMs shard {shard}"):
            keys = np.asarray(row.labels, dtype=np.int64)
            maps = multiscale_cams(model, load_rgb(row.image_path), keys, cam["scales"], bool(cam["flip"]), fp16)
            put_cams(out, row.image_id, keys, {"cam": maps}, (int(row.height), int(row.width)))
        set_image_order(out, list(table["image_id"]))
    log.info("SemPLeS CAMs for shard %s: %d images", shard, len(table))
