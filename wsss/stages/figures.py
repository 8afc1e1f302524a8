"""Report figures of one method instance: per-class IoU, sample strips, pseudo-mask confidence, training."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from wsss.cam_shards import FINAL_MAP
from wsss.crf import training_labels
from wsss.datasets import read_manifest, usable_rows
from wsss.figures import colour_labels, confidence_figure, per_class_iou_figure, sample_strips_figure, training_figure
from wsss.h5store import image_ids, iter_images, open_stage
from wsss.images import decode_image
from wsss.masks_png import read_label_png
from wsss.stages.pseudo_masks import recipe_threshold

log = logging.getLogger(__name__)

STRIP_COLUMNS = ("image", "ground truth", "initial CAM", "CAM", "pseudo mask", "segmenter")
CONFIDENCE_BINS = 50


def sample_ids(manifest_path: str | Path, count: int) -> list[str]:
    """The fixed sample of a report: the first ``count`` usable images, in manifest order, those with
    ground truth first."""
    table, _ = usable_rows(read_manifest(manifest_path))
    with_gt = table["gt_path"] != ""
    return (list(table.loc[with_gt, "image_id"]) + list(table.loc[~with_gt, "image_id"]))[:count]


def _heat(cams: np.ndarray, height: int, width: int) -> np.ndarray:
    """The strongest class map of a (K, h, w) stack at image size, scaled to 0..1."""
    strongest = cv2.resize(np.asarray(cams, np.float32).max(axis=0), (width, height), interpolation=cv2.INTER_LINEAR)
    low, high = float(strongest.min()), float(strongest.max())
    return (strongest - low) / (high - low) if high > low else np.zeros_like(strongest)


def _predictor(model_path: str | Path | None):
    """image -> the segmenter's single-scale label map, or None without a segmenter."""
    if model_path is None:
        return None
    from wsss.segmenter.predict import predict_probs
    from wsss.segmenter.train import load_predictor

    model, normalisation = load_predictor(model_path, device=torch.device("cpu"))
    return lambda image: np.argmax(predict_probs(model, image, scales=(1.0,), flip=False,
                                                 normalisation=normalisation), axis=0).astype(np.uint8)


def write_method_figures(method: str, manifest_path: str | Path, cam_files: Sequence[str | Path],
                         crf_files: Sequence[str | Path], per_class: Mapping[str, str | Path],
                         pseudo_masks: Mapping[str, Any], model_path: str | Path | None, samples: int,
                         out: Mapping[str, str | Path], locking: Any = None) -> None:
    """Write ``out["per_class"]``, ``out["samples"]`` and ``out["confidence"]`` for one method instance."""
    tables = {stage: pd.read_csv(path) for stage, path in per_class.items()}
    per_class_iou_figure(tables, out["per_class"], f"{method}: IoU per class")
    threshold = recipe_threshold(pseudo_masks)
    wanted = sample_ids(manifest_path, samples)
    table = read_manifest(manifest_path).set_index("image_id")
    cams = {image_id: stored for image_id, stored in _stored(cam_files, wanted, locking)}
    crf = {image_id: stored for image_id, stored in _stored(crf_files, wanted, locking)}
    predict = _predictor(model_path)
    rows = []
    for image_id in wanted:
        image = decode_image(table.loc[image_id, "image_path"])
        height, width = image.shape[:2]
        row = {"image": image}
        if table.loc[image_id, "gt_path"]:
            row["ground truth"] = colour_labels(read_label_png(table.loc[image_id, "gt_path"]))
        if image_id in cams:
            row["CAM"] = _heat(cams[image_id][FINAL_MAP], height, width)
            if "cam_initial" in cams[image_id]:
                row["initial CAM"] = _heat(cams[image_id]["cam_initial"], height, width)
        if image_id in crf:
            row["pseudo mask"] = colour_labels(training_labels(crf[image_id]["labels"], crf[image_id]["confidence"],
                                                               threshold))
        if predict is not None:
            row["segmenter"] = colour_labels(predict(image))
        rows.append(row)
    columns = [c for c in STRIP_COLUMNS if any(c in row for row in rows)]
    sample_strips_figure(rows, columns, out["samples"], f"{method}: samples (white = ignored)")
    counts, ignored, total = np.zeros(CONFIDENCE_BINS), 0, 0
    for _, stored in iter_images(crf_files, locking):
        confidence = np.asarray(stored["confidence"], np.float64).ravel()
        counts += np.histogram(confidence, bins=CONFIDENCE_BINS, range=(0.0, 1.0))[0]
        ignored += int(np.sum(confidence < threshold))
        total += confidence.size
    confidence_figure(counts, ignored / max(total, 1), threshold, out["confidence"], f"{method} pseudo masks")
    log.info("figures of %s: %d per-class tables, %d samples, %d pixels of confidence", method, len(tables),
             len(rows), total)


def _stored(files: Sequence[str | Path], wanted: Sequence[str], locking: Any):
    """(image id, stored arrays) of the wanted ids, reading only the shards that hold them."""
    remaining = set(wanted)
    for path in files:
        if not remaining:
            return
        with open_stage(path, locking) as handle:
            present = remaining & set(image_ids(handle))
        if present:
            for image_id, stored in iter_images([path], locking):
                if image_id in present:
                    remaining.discard(image_id)
                    yield image_id, stored


def write_training_figure(method: str, history_path: str | Path, out_path: str | Path) -> None:
    """Loss and learning rate of a method's segmenter training."""
    training_figure(pd.read_csv(history_path), out_path, f"{method}: segmenter training")
