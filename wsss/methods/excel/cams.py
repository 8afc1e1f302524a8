"""ExCEL step 2: training-free CAMs of one shard (surgery forward, feature surgery against the enriched text,
then CAA with ExCEL's layer mix); writes the method contract shard."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss import cam_shards
from wsss.clip.affinity import refine_cams, sinkhorn_affinity
from wsss.clip.configured import load_configured_clip
from wsss.clip.factory import patch_size
from wsss.clip.transform import IMAGENET_MEAN_255, IMAGENET_STD_255, normalised_resize
from wsss.datasets import read_manifest, usable_rows
from wsss.devices import default_device
from wsss.h5store import open_stage, set_image_order, write_stage
from wsss.images import decode_image
from wsss.methods.excel.attributes import enrich_class_text
from wsss.methods.excel.similarity import feature_surgery, normalise_features, token_minmax
from wsss.methods.excel.surgery import layer_mix, surgery_forward
from wsss.progress import progress
from wsss.shards import shard_rows

log = logging.getLogger(__name__)

def enriched_text(foreground: torch.Tensor, background: torch.Tensor, bank_path: str | Path | None,
                  attributes: Mapping[str, Any], locking: Any = None) -> torch.Tensor:
    """The texts of the feature surgery: the classes (enriched from the bank when attributes are enabled),
    then the background words, unchanged."""
    if attributes["enabled"]:
        with open_stage(bank_path, locking) as bank:
            centres = torch.from_numpy(bank["centres"][()])
        foreground = enrich_class_text(foreground, centres.to(foreground.device), attributes["keep_fraction"],
                                       attributes["temperature"], attributes["weight"])
    return torch.cat([foreground, background])


def input_shape(height: int, width: int, cam: Mapping[str, Any], patch: int) -> tuple[int, int]:
    """The (h, w) the image is resized to: ``cam.input_size`` squared (``resize: square``, the reference), or
    its own aspect ratio at about as many pixels, each side a multiple of the patch size (``keep_aspect``)."""
    size = int(cam["input_size"])
    if cam["resize"] == "square":
        return size, size
    scale = size / math.sqrt(height * width)
    return tuple(max(patch, round(side * scale / patch) * patch) for side in (height, width))


def excel_maps(model, tensor: torch.Tensor, text: torch.Tensor, keys: np.ndarray, cam: Mapping[str, Any],
               caa: Mapping[str, Any]) -> dict[str, Any]:
    """cam_initial and cam (K, h, w) on the patch grid of one (3, H, W) input for the classes ``keys``, with the
    counts of constant maps and empty boxes."""
    attention_blocks = -int(caa["attn_layers"][0])
    out = surgery_forward(model, tensor[None], int(cam["surgery_blocks"]), cam["head_reduce"], attention_blocks)
    features = normalise_features(out.features[0].float(), cam["feature_norm"])
    maps, constant = token_minmax(feature_surgery(features, text))
    grid = [side // patch_size(model) for side in tensor.shape[-2:]]
    initial = maps[1:, torch.from_numpy(keys).to(maps.device)].t().reshape(len(keys), *grid).float().cpu()
    empty = np.zeros(len(keys), bool)
    refined = initial
    if caa["enabled"]:
        attention = layer_mix(out.attention, out.first_attention_block, out.first_surgery_block, out.heads,
                              caa["surgery_head_reduce"])[0]
        affinity = sinkhorn_affinity(attention.float().cpu(), rounds=int(caa["sinkhorn_rounds"]))
        refined, empty = refine_cams(initial, affinity, power=int(caa["power"]), threshold=float(caa["box_threshold"]),
                                     border=caa["box_border"], empty_box=caa["empty_box"], return_empty=True)
    return {"cam": refined.numpy(), "cam_initial": initial.numpy(), "constant": constant, "empty": int(empty.sum())}


def run_excel_cams(manifest_path: str | Path, shard: str, shard_size: int, text_path: str | Path,
                   bank_path: Sequence[str | Path], clip: Mapping[str, Any], checkpoint: Sequence[str | Path],
                   method: Mapping[str, Any], out_path: str | Path, locking: Any = None) -> None:
    """ExCEL's training-free CAMs for one shard, in the method contract."""
    cam, caa, attributes = method["cam"], method["caa"], method["attributes"]
    device = default_device()
    if cam["precision"] == "fp32":  # the reference runs the CLIP in fp32 (its fp16 values, fp32 arithmetic)
        clip = {**clip, "precision": "fp32"}
    model, _, clip_mean, clip_std = load_configured_clip(clip, checkpoint, device)
    if cam["normalization"] == "imagenet":
        mean, std = IMAGENET_MEAN_255, IMAGENET_STD_255
    else:  # CLIP's own statistics, on the 0-255 scale
        mean, std = tuple(255 * m for m in clip_mean), tuple(255 * s for s in clip_std)
    with open_stage(text_path, locking) as stored:
        foreground = torch.from_numpy(stored["foreground"][()]).to(device)
        background = torch.from_numpy(stored["background"][()]).to(device)
    text = enriched_text(foreground, background, bank_path[0] if bank_path else None, attributes, locking)
    table, skipped = usable_rows(shard_rows(read_manifest(manifest_path), shard, shard_size))
    params = {"clip": dict(clip), "cam": dict(cam), "caa": dict(caa), "attributes": dict(attributes)}
    constant = empty = 0
    with write_stage(out_path, cam_shards.STAGE, params, inputs=[manifest_path, text_path, *bank_path, *checkpoint],
                     locking=locking, skipped=skipped) as out, \
            progress(total=len(table), desc=f"ExCEL shard {shard}") as bar:
        for row in table.itertuples(index=False):
            keys = np.sort(np.asarray(row.labels, dtype=np.int64))  # ascending, as the reference
            size = input_shape(int(row.height), int(row.width), cam, patch_size(model))
            tensor = normalised_resize(decode_image(row.image_path), size, mean, std).to(device)
            result = excel_maps(model, tensor, text, keys, cam, caa)
            constant, empty = constant + result["constant"], empty + result["empty"]
            cam_shards.put_cams(out, row.image_id, keys, {"cam": result["cam"], "cam_initial": result["cam_initial"]},
                                (int(row.height), int(row.width)),
                                {"empty_boxes": result["empty"], "constant_maps": result["constant"]})
            bar.update(1)
        set_image_order(out, list(table["image_id"]))
    log.info("ExCEL CAMs for shard %s: %d images on %s; %d constant maps, %d empty boxes", shard, len(table),
             device, constant, empty)
