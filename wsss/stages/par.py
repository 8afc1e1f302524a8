"""The PAR stage: a method's CAM shard refined by pixel-adaptive refinement (PAR) into labels and confidence,
the same layout as the CRF stage, for instances with ``pseudo_masks.refiner: par`` (ExCEL's seeds)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.clip.transform import normalised_square
from wsss.crf import probability_stack, upsample_cams
from wsss.datasets import read_manifest
from wsss.h5store import image_ids, open_stage, put_image, set_image_order, skipped_images, write_stage
from wsss.images import decode_image
from wsss.par import ParConfig, par_refine
from wsss.progress import progress
from wsss.shards import shard_rows

log = logging.getLogger(__name__)

DEFAULT_PAR = {"iterations": 20, "dilations": [1, 2, 4, 8, 12, 24], "w_image": 0.3, "w_pos": 0.01,
               "image": "resized_input", "input_size": 320}


def par_settings(pseudo_masks: Mapping[str, Any]) -> dict[str, Any]:
    """The PAR settings of a pseudo-mask recipe, the reference's where the recipe leaves them out."""
    given = pseudo_masks.get("par") or {}
    return {key: given.get(key, default) for key, default in DEFAULT_PAR.items()}


def par_image(image: np.ndarray, mode: str, input_size: int) -> torch.Tensor:
    """(3, H, W) float image PAR compares colours on: the RGB image, or (``resized_input``, the reference's) the
    ImageNet-normalised input_size square resized back to H x W (bilinear, corners aligned)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    if mode == "original":
        return x
    if mode != "resized_input":
        raise ValueError(f"pseudo_masks.par.image must be resized_input or original, got {mode!r}")
    height, width = x.shape[-2:]
    square = normalised_square(image, input_size)
    return F.interpolate(square[None], size=(height, width), mode="bilinear", align_corners=True)[0]


def par_labels(cams: np.ndarray, keys: np.ndarray, image: torch.Tensor, config: ParConfig,
               alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8, confidence float16) at image size: [(1 - max)^alpha background, CAMs] upsampled in float32,
    refined by PAR, arg-maxed (0 background, class k + 1); confidence is the winner's share of the refined sum."""
    height, width = image.shape[-2:]
    stack = probability_stack(upsample_cams(cams, (height, width), faithful=False), alpha)
    refined = par_refine(torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32)), image, config)
    total = refined.sum(dim=0).clamp_min(1e-12)
    best, index = refined.max(dim=0)
    values = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)
    return values[index.numpy()], (best / total).numpy().astype(np.float16)


def run_par(cams_path: str | Path, manifest_path: str | Path, shard: str, shard_size: int,
            pseudo_masks: Mapping[str, Any], out_path: str | Path, locking: Any = None) -> None:
    """PAR over one shard's final CAMs (the contract's ``cam``); writes label maps and per-pixel confidence."""
    settings = par_settings(pseudo_masks)
    config = ParConfig(int(settings["iterations"]), tuple(int(d) for d in settings["dilations"]),
                       float(settings["w_image"]), float(settings["w_pos"]))
    alpha = float((pseudo_masks.get("crf") or {}).get("alpha", 1.0))
    table = shard_rows(read_manifest(manifest_path), shard, shard_size).set_index("image_id")
    with open_stage(cams_path, locking) as cams, \
            write_stage(out_path, "par", {"par": settings, "alpha": alpha}, inputs=[cams_path, manifest_path],
                        locking=locking, skipped=skipped_images(cams)) as out:
        ids = image_ids(cams)
        unknown = [i for i in ids if i not in table.index]
        if unknown:
            raise ValueError(f"{cams_path}: image {unknown[0]!r} is not in shard {shard} of {manifest_path}")
        with progress(total=len(ids), desc=f"PAR shard {shard}") as bar:
            for image_id in ids:
                image = par_image(decode_image(table.loc[image_id, "image_path"]), settings["image"],
                                  int(settings["input_size"]))
                labels, confidence = par_labels(cams[image_id]["cam"][()], cams[image_id]["keys"][()], image, config,
                                                alpha)
                height, width = labels.shape
                put_image(out, image_id, {"labels": labels, "confidence": confidence}, {"height": height, "width": width})
                bar.update(1)
        set_image_order(out, ids)
    log.info("PAR on shard %s: %d images, %d iterations, image %s", shard, len(ids), config.iterations,
             settings["image"])
