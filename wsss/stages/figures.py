"""Report figures: every instance's per-class IoU side by side per stage; sample strips, pseudo-mask confidence and
training curves of one instance."""

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
from wsss.tables import STAGE_TITLES

log = logging.getLogger(__name__)

CONFIDENCE_BINS = 50
IGNORED = "ignored"


def sample_ids(manifest_path: str | Path, count: int) -> list[str]:
    """The fixed sample of a report: the first ``count`` usable images, in manifest order, those with
    ground truth first."""
    table, _ = usable_rows(read_manifest(manifest_path))
    with_gt = table["gt_path"] != ""
    return (list(table.loc[with_gt, "image_id"]) + list(table.loc[~with_gt, "image_id"]))[:count]


def scaled_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """One class's (h, w) map at image size, scaled to 0..1 (a flat map is all zeros)."""
    resized = cv2.resize(np.asarray(cam, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    low, high = float(resized.min()), float(resized.max())
    return (resized - low) / (high - low) if high > low else np.zeros_like(resized)


def headline_column(columns: Sequence[str]) -> str:
    """The column a stage's per-class figure shows for one instance: the first that is not an earlier map
    (``cam_initial_*``), in the order the evaluation wrote them."""
    return next((c for c in columns if not c.startswith("cam_initial")), columns[0])


def _predictor(model_path: str | Path | None):
    """image -> the segmenter's single-scale label map, or None without a segmenter."""
    if model_path is None:
        return None
    from wsss.segmenter.predict import predict_probs
    from wsss.segmenter.train import load_predictor

    model, normalisation = load_predictor(model_path, device=torch.device("cpu"))
    return lambda image: np.argmax(predict_probs(model, image, scales=(1.0,), flip=False,
                                                 normalisation=normalisation), axis=0).astype(np.uint8)


def write_per_class_figures(per_class: Mapping[str, Mapping[str, str | Path]], out: Mapping[str, str | Path]) -> None:
    """For each stage in ``out`` (``cams``, ``pseudo_masks``, ``segmenter``), one figure of every instance's
    per-class IoU side by side (``per_class``: instance -> stage -> per-class table)."""
    for stage, path in out.items():
        bars, classes, splits = {}, None, set()
        for method, tables in per_class.items():
            if stage not in tables:
                continue
            table = pd.read_csv(tables[stage])
            column = headline_column([c for c in table.columns if c != "class"])
            stage_name, _, split = column.rpartition("_")
            bars[f"{method}: {stage_name}"] = table[column].to_numpy(dtype=float)
            classes = list(table["class"]) if classes is None else classes
            splits.add(split)
        title = f"IoU per class: {STAGE_TITLES.get(stage, stage)} ({', '.join(sorted(splits))})"
        per_class_iou_figure(bars, classes or [], path, title)
        log.info("%s: %d instances", path, len(bars))


def write_method_figures(method: str, manifest_path: str | Path, cam_files: Sequence[str | Path],
                         crf_files: Sequence[str | Path], class_names: Sequence[str],
                         pseudo_masks: Mapping[str, Any], model_path: str | Path | None, samples: int,
                         out: Mapping[str, str | Path], locking: Any = None) -> None:
    """Write the sample strips (``out["samples"]`` PNG, ``out["samples_pdf"]``) and the confidence histogram
    (``out["confidence"]``) of one method instance."""
    threshold = recipe_threshold(pseudo_masks)
    wanted = sample_ids(manifest_path, samples)
    table = read_manifest(manifest_path).set_index("image_id")
    cams = dict(_stored(cam_files, wanted, locking))
    crf = dict(_stored(crf_files, wanted, locking))
    predict = _predictor(model_path)
    rows, shown = [], {0}
    for image_id in wanted:
        image = decode_image(table.loc[image_id, "image_path"])
        height, width = image.shape[:2]
        row = [("image", image)]
        if table.loc[image_id, "gt_path"]:
            labels = read_label_png(table.loc[image_id, "gt_path"])
            shown |= set(np.unique(labels).tolist())
            row.append(("ground truth", colour_labels(labels)))
        if image_id in crf:
            labels = training_labels(crf[image_id]["labels"], crf[image_id]["confidence"], threshold)
            shown |= set(np.unique(labels).tolist())
            row.append(("pseudo mask", colour_labels(labels)))
        if predict is not None:
            labels = predict(image)
            shown |= set(np.unique(labels).tolist())
            row.append(("segmenter", colour_labels(labels)))
        if image_id in cams:  # one panel per labelled class: where the method finds that class
            stored = cams[image_id]
            for key, cam in zip(np.asarray(stored["keys"]), np.asarray(stored[FINAL_MAP])):
                row.append((f"CAM: {class_names[int(key)]}", scaled_map(cam, height, width)))
        rows.append(row)
    names = ["background", *class_names]
    legend = {names[value] if value < len(names) else IGNORED: int(value) for value in sorted(shown)}
    sample_strips_figure(rows, wanted, legend, [out["samples"], out["samples_pdf"]],
                         f"{method}: samples (white: ignored)")
    counts, ignored, total = np.zeros(CONFIDENCE_BINS), 0, 0
    for _, stored in iter_images(crf_files, locking):
        confidence = np.asarray(stored["confidence"], np.float64).ravel()
        counts += np.histogram(confidence, bins=CONFIDENCE_BINS, range=(0.0, 1.0))[0]
        ignored += int(np.sum(confidence < threshold))
        total += confidence.size
    confidence_figure(counts, ignored / max(total, 1), threshold, out["confidence"], f"{method} pseudo masks")
    log.info("figures of %s: %d samples, %d pixels of confidence", method, len(rows), total)


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
