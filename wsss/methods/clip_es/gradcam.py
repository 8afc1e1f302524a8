"""CLIP-ES step 1: softmax-GradCAM (initial CAMs) and the attention affinity input, one shard at a time."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from wsss.clip.configured import load_configured_clip
from wsss.clip.factory import model_dtype, patch_size
from wsss.clip.transform import preprocess_file
from wsss.datasets import read_manifest, usable_rows
from wsss.cpu_features import native_bf16
from wsss.devices import default_device
from wsss.methods.clip_es.softmax_gradcam import autocast_precision, softmax_gradcam, softmax_gradcam_batch
from wsss.h5store import open_stage, put_image, set_image_order, write_stage
from wsss.progress import progress
from wsss.shards import shard_rows

log = logging.getLogger(__name__)


def image_batches(table: pd.DataFrame, batch_size: int) -> list[pd.DataFrame]:
    """The shard's rows in batches of at most batch_size images of one size (one size = one patch grid).

    With batch_size 1 the rows keep the manifest's order; otherwise they are grouped by size, in the
    order each size first appears, and each group is cut into batches.
    """
    if batch_size < 1:
        raise ValueError(f"cam.batch_size must be at least 1, got {batch_size}")
    if batch_size == 1:
        return [table.iloc[i : i + 1] for i in range(len(table))]
    batches = []
    for _, group in table.groupby(["height", "width"], sort=False):
        batches += [group.iloc[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


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
    """Initial softmax-GradCAMs (patch resolution) and the attention affinity input for one shard.

    Images are decoded one batch ahead on a worker thread while the model runs; cam.batch_size > 1
    runs images of one size together (softmax_gradcam_batch, the fast arithmetic on fp32 weights).
    """
    device = default_device()
    if cam["precision"] == "bf16" and device.type == "cpu" and not native_bf16():
        log.warning("cam.precision bf16 runs emulated on this CPU (no native bf16): far slower than fp32, and not "
                    "faithful")
    if autocast_precision(cam["precision"]) and clip.get("precision") == "fp16":
        log.info("cam.precision %s autocasts fp32 weights: loading the CLIP in fp32", cam["precision"])
        clip = {**clip, "precision": "fp32"}
    model, _, mean, std = load_configured_clip(clip, checkpoint, device)
    batch_size = int(cam["batch_size"])
    if batch_size > 1 and model_dtype(model) != torch.float32:
        raise ValueError(f"cam.batch_size {batch_size} needs fp32 weights (clip.precision fp32, or cam.precision "
                         f"bf16/fp16, which autocast them); the faithful fp16 path runs one image at a time")
    table = shard_rows(read_manifest(manifest_path), shard, shard_size)
    table, skipped = usable_rows(table)
    with open_stage(text_path, locking) as text:
        foreground = torch.from_numpy(text["foreground"][()]).to(device)
        background = torch.from_numpy(text["background"][()]).to(device)
    options = {"score": cam["score"], "use_background": cam["use_background"], "attn_layers": tuple(cam["attn_layers"]),
               "precision": cam["precision"]}
    inputs = [manifest_path, text_path, *checkpoint]
    params = {"clip": dict(clip), "cam": dict(cam)}
    patch, scale = patch_size(model), float(cam["input_scale"])

    def decode(rows: pd.DataFrame) -> list[torch.Tensor]:
        return [preprocess_file(path, patch, mean, std, scale=scale) for path in rows["image_path"]]

    batches = image_batches(table, batch_size)
    with write_stage(cams_path, "gradcam", params, inputs=inputs, locking=locking, skipped=skipped) as cams_out, \
            write_stage(affinity_path, "affinity", params, inputs=inputs, locking=locking,
                        skipped=skipped) as affinity_out, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as decoder, \
            progress(total=len(table), desc=f"GradCAM shard {shard}") as bar:
        upcoming = decoder.submit(decode, batches[0]) if batches else None
        for i, rows in enumerate(batches):
            tensors = upcoming.result()
            upcoming = decoder.submit(decode, batches[i + 1]) if i + 1 < len(batches) else None
            keys = [np.asarray(labels, dtype=np.int64) for labels in rows["labels"]]
            classes = [foreground[torch.from_numpy(k).to(device)] for k in keys]
            if batch_size == 1:
                results = [softmax_gradcam(model, tensors[0], classes[0], background, **options)]
            else:  # one manifest size, one decoded size: the manifest rule checked every image's size
                results = softmax_gradcam_batch(model, torch.stack(tensors), classes, background, **options)
            for row, k, result in zip(rows.itertuples(index=False), keys, results):
                size = {"height": int(row.height), "width": int(row.width)}
                put_image(cams_out, row.image_id, {"keys": k.astype(np.int16), "cam": result.cams.cpu().numpy()},
                          size)
                # Uncompressed: the file is temporary, and gzip would cost about 5 % of a forward pass per image.
                put_image(affinity_out, row.image_id, {"attention": result.attention_mean.cpu().numpy()}, size,
                          compression=None)
            bar.update(len(rows))
        for handle in (cams_out, affinity_out):
            set_image_order(handle, list(table["image_id"]))
    log.info("GradCAM for shard %s: %d images on %s, batches of up to %d", shard, len(table), device, batch_size)
