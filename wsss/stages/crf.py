"""CRF stages: dense-CRF label maps with confidence per shard, and the PNG export of training masks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wsss.crf import CrfConfig, crf_many, training_labels
from wsss.datasets import read_manifest
from wsss.h5store import get_image, image_ids, open_stage, put_image, set_image_order, write_stage
from wsss.masks_png import export_layout
from wsss.shards import shard_rows
from wsss.stages.evaluate import iter_shard_images

log = logging.getLogger(__name__)


def crf_config(section: Mapping[str, Any]) -> CrfConfig:
    """The CRF settings of the config's ``crf:`` section (without the downstream confidence threshold)."""
    section = dict(section)
    section.pop("confidence_threshold", None)
    label_unary = dict(section.pop("label_unary", {}) or {})
    if section.get("mode") == "label_unary":
        # SemPLeS's label CRF has its own kernels; explicit ones under label_unary override the preset.
        kernels = {k: label_unary.pop(k) for k in ("gaussian", "bilateral") if k in label_unary}
        section = {k: v for k, v in section.items() if k not in ("gaussian", "bilateral")}
        section.update(kernels)
        section.setdefault("preset", "semples_voc")
    section.update({k: label_unary[k] for k in ("gt_prob", "bg_threshold") if k in label_unary})
    return CrfConfig.from_dict(section)


def run_crf(
    caa_path: str | Path,
    manifest_path: str | Path,
    shard: str,
    shard_size: int,
    section: Mapping[str, Any],
    out_path: str | Path,
    workers: int = 1,
    locking: Any = None,
) -> None:
    """Dense CRF over one shard's refined CAMs; writes label maps and per-pixel confidence."""
    cfg = crf_config(section)
    table = shard_rows(read_manifest(manifest_path), shard, shard_size)
    paths = dict(zip(table["image_id"], table["image_path"]))
    with open_stage(caa_path, locking) as caa:
        ids = image_ids(caa)
        unknown = [i for i in ids if i not in paths]
        if unknown:
            raise ValueError(f"{caa_path}: image {unknown[0]!r} is not in shard {shard} of {manifest_path}")
        items = ((i, paths[i], caa[i]["cam"][()], caa[i]["keys"][()]) for i in ids)
        with write_stage(out_path, "crf", dict(section), inputs=[caa_path, manifest_path], locking=locking) as out:
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
    threshold: float,
    listing_path: str | Path,
    locking: Any = None,
) -> None:
    """Write the confidence-masked training labels as VOC-palette PNGs plus deeplab-pytorch/mmseg lists."""
    listing_path = Path(listing_path)
    out_dir = listing_path.parent
    table = read_manifest(manifest_path)
    image_dirs = {str(Path(p).parent) for p in table["image_path"]}
    masks = (
        (image_id, training_labels(stored["labels"], stored["confidence"], threshold))
        for image_id, stored in iter_shard_images(crf_files, locking)
    )
    written = export_layout(
        out_dir, masks, split="list_tmp", image_dir=image_dirs.pop() if len(image_dirs) == 1 else None
    )
    # export_layout writes list/<split>.txt; publish it under the rule's declared name last.
    written.replace(listing_path)
    (written.parent / "list_tmp_ids.txt").replace(out_dir / "ids.txt")
    written.parent.rmdir()
    log.info("exported %d pseudo masks to %s (threshold %.3f)", len(table), out_dir, threshold)
