"""Pseudo-mask stages: a method's CAM shards through its dense-CRF recipe, and the PNG export of training masks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss.crf import CrfConfig, crf_many, training_labels
from wsss.datasets import read_manifest
from wsss.h5store import image_ids, iter_images, open_stage, put_image, set_image_order, skipped_images, write_stage
from wsss.masks_png import MASK_DIR, export_layout
from wsss.oracle import read_threshold
from wsss.shards import shard_rows

log = logging.getLogger(__name__)


def crf_config(section: Mapping[str, Any], confidence_threshold: float | None = None) -> CrfConfig:
    """The CRF of a pseudo-mask recipe; settings left out take the CRF mode's published values."""
    return CrfConfig.from_dict({**section, "confidence": confidence_threshold})


def recipe_refiner(pseudo_masks: Mapping[str, Any]) -> str:
    """The refiner of a pseudo-mask recipe, and the name of its stage: crf (the default) or par."""
    return pseudo_masks.get("refiner", "crf")


def recipe_threshold(pseudo_masks: Mapping[str, Any]) -> float:
    """The confidence below which a pseudo-mask pixel is ignored (null: the CRF mode's own rule)."""
    return float(crf_config(pseudo_masks["crf"], pseudo_masks.get("confidence_threshold")).confidence)


def run_crf(
    cams_path: str | Path,
    manifest_path: str | Path,
    shard: str,
    shard_size: int,
    section: Mapping[str, Any],
    out_path: str | Path,
    workers: int = 1,
    locking: Any = None,
    oracle_threshold: str | Path | None = None,
) -> None:
    """Dense CRF over one shard's final CAMs (the contract's ``cam``); writes label maps and per-pixel confidence.

    ``oracle_threshold`` (gt_select instances) replaces the label-unary background threshold by the one
    chosen on ground truth.
    """
    if oracle_threshold is not None:
        section = {**section, "bg_threshold": read_threshold(oracle_threshold)}
    cfg = crf_config(section)
    table = shard_rows(read_manifest(manifest_path), shard, shard_size)
    paths = dict(zip(table["image_id"], table["image_path"]))
    with open_stage(cams_path, locking) as cams:
        ids = image_ids(cams)
        unknown = [i for i in ids if i not in paths]
        if unknown:
            raise ValueError(f"{cams_path}: image {unknown[0]!r} is not in shard {shard} of {manifest_path}")
        items = ((i, paths[i], cams[i]["cam"][()], cams[i]["keys"][()]) for i in ids)
        with write_stage(out_path, "crf", dict(section), inputs=[cams_path, manifest_path], locking=locking,
                         skipped=skipped_images(cams)) as out:
            for image_id, labels, confidence in crf_many(
                items, cfg, workers=workers, progress_stream=sys.stderr, total=len(ids)
            ):
                height, width = labels.shape
                put_image(
                    out, image_id, {"labels": labels, "confidence": confidence}, {"height": height, "width": width}
                )
            set_image_order(out, ids)
    log.info("CRF on shard %s: %d images, %d workers", shard, len(ids), workers)


def export_pseudo_masks(
    crf_files: Sequence[str | Path],
    manifest_path: str | Path,
    pseudo_masks: Mapping[str, Any],
    listing_path: str | Path,
    locking: Any = None,
) -> None:
    """Write the confidence-masked training labels as VOC-palette PNGs plus deeplab-pytorch/mmseg lists."""
    threshold = recipe_threshold(pseudo_masks)
    listing_path = Path(listing_path)
    out_dir = listing_path.parent
    masks = (
        (image_id, training_labels(stored["labels"], stored["confidence"], threshold))
        for image_id, stored in iter_images(crf_files, locking)
    )
    count = publish_masks(masks, manifest_path, listing_path, MASK_DIR)
    log.info("exported %d pseudo masks to %s (threshold %.3f)", count, listing_path.parent, threshold)


def publish_masks(masks: Iterable[tuple[str, np.ndarray]], manifest_path: str | Path, listing_path: str | Path,
                  mask_dir: str) -> int:
    """Export label maps as palette PNGs beside ``listing_path`` (list.txt, ids.txt, JPEGImages); return the count."""
    listing_path = Path(listing_path)
    table = read_manifest(manifest_path)
    written = export_layout(listing_path.parent, masks, dict(zip(table["image_id"], table["image_path"])),
                            split="list_tmp", mask_dir=mask_dir)
    # export_layout writes list/<split>.txt; publish it under the rule's declared name last.
    count = len(written.read_text().splitlines())
    written.replace(listing_path)
    (written.parent / "list_tmp_ids.txt").replace(listing_path.parent / "ids.txt")
    written.parent.rmdir()
    return count
