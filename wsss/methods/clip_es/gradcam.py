"""CLIP-ES step 1: softmax-GradCAM (initial CAMs) and the attention affinity input, one shard at a time."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.clip.configured import load_configured_clip
from wsss.clip.factory import patch_size
from wsss.clip.transform import preprocess_file
from wsss.datasets import read_manifest, usable_rows
from wsss.devices import default_device
from wsss.gradcam import softmax_gradcam
from wsss.h5store import open_stage, put_image, set_image_order, write_stage
from wsss.progress import progress
from wsss.shards import shard_rows

log = logging.getLogger(__name__)


def run_gradcam(
    manifest_path: str | Path,
    shard: str,
    shard_size: int,
    text_path: str | Path,
    clip: Mapping[str, Any],
    checkpoint: Sequence[str | Path],
    cam: Mapping[str, Any],
    cams_path: str | Path,
    affinity_path: str | Path,
    locking: Any = None,
) -> None:
    """Initial softmax-GradCAMs (patch resolution) and the attention affinity input for one shard."""
    device = default_device()
    model, _, mean, std = load_configured_clip(clip, checkpoint, device)
    table = shard_rows(read_manifest(manifest_path), shard, shard_size)
    table, skipped = usable_rows(table)
    with open_stage(text_path, locking) as text:
        foreground = torch.from_numpy(text["foreground"][()]).to(device)
        background = torch.from_numpy(text["background"][()]).to(device)
    options = {"score": cam["score"], "use_background": cam["use_background"], "attn_layers": tuple(cam["attn_layers"])}
    inputs = [manifest_path, text_path, *checkpoint]
    params = {"clip": dict(clip), "cam": dict(cam)}
    patch = patch_size(model)
    with write_stage(cams_path, "gradcam", params, inputs=inputs, locking=locking, skipped=skipped) as cams_out, \
            write_stage(affinity_path, "affinity", params, inputs=inputs, locking=locking,
                        skipped=skipped) as affinity_out:
        for row in progress(table.itertuples(index=False), total=len(table), desc=f"GradCAM shard {shard}"):
            tensor = preprocess_file(row.image_path, patch, mean, std, scale=float(cam["input_scale"]))
            keys = np.asarray(row.labels, dtype=np.int64)
            result = softmax_gradcam(model, tensor, foreground[torch.from_numpy(keys).to(device)], background,
                                     **options)
            size = {"height": int(row.height), "width": int(row.width)}
            put_image(cams_out, row.image_id, {"keys": keys.astype(np.int16), "cam": result.cams.cpu().numpy()}, size)
            # Uncompressed: the file is temporary, and gzip would cost about 5 % of a forward pass per image.
            put_image(affinity_out, row.image_id, {"attention": result.attention_mean.cpu().numpy()}, size,
                      compression=None)
        for handle in (cams_out, affinity_out):
            set_image_order(handle, list(table["image_id"]))
    log.info("GradCAM for shard %s: %d images on %s", shard, len(table), device)
