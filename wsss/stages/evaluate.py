"""Evaluation stages: CAMs, pseudo masks and segmenter predictions against ground truth."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss import cam_shards
from wsss.atomic import write_text_atomic
from wsss.classes import dataset_classes
from wsss.datasets import read_manifest
from wsss.h5store import image_ids, iter_images, open_stage
from wsss.crf import training_labels, upsample_cams
from wsss.metrics import IGNORE, confusion_matrix, scores
from wsss.oracle import read_threshold, write_threshold
from wsss.tables import write_metrics, write_per_class

log = logging.getLogger(__name__)


def read_gt(path: str | Path) -> np.ndarray:
    """Ground-truth label map as stored (palette indices or single-channel values; 255 = ignore)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: ground truth must be a palette or single-channel PNG, got mode {image.mode}")
        return np.array(image)


def cam_labels(cams: np.ndarray, keys: np.ndarray, size: tuple[int, int], alpha: float | None = None,
               threshold: float | None = None) -> np.ndarray:
    """Label map from CAMs: bilinear upsampling, a background score ((1 - max)^alpha or a constant threshold), argmax."""
    if (alpha is None) == (threshold is None):
        raise ValueError("cam_labels needs exactly one of alpha (CLIP-ES) and threshold (SemPLeS)")
    full = upsample_cams(cams, size, faithful=True).astype(np.float32)
    if threshold is None:
        background = (1.0 - full.max(axis=0, initial=0.0)) ** alpha
    else:
        background = np.full(full.shape[1:], threshold, dtype=np.float32)
    values = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    return values[np.argmax(np.concatenate([background[None], full]), axis=0)].astype(np.uint8)


def background_rules(alphas: Sequence[float], thresholds: Sequence[float]) -> list[tuple[str, dict[str, float]]]:
    """(stage suffix, cam_labels keyword) for each background rule a method is scored with."""
    rules = [(f"alpha{alpha:g}", {"alpha": float(alpha)}) for alpha in alphas]
    return rules + [(f"t{threshold:g}", {"threshold": float(threshold)}) for threshold in thresholds]


def _eval_targets(manifest_paths: Sequence[str | Path]) -> dict[str, dict[str, str]]:
    """For each evaluated split: image id -> GT path, with a clear error for images without GT."""
    targets = {}
    for path in manifest_paths:
        split = Path(path).stem
        table = read_manifest(path)
        table = table[table["skip_reason"] == ""]
        missing = table[table["gt_path"] == ""]
        if len(missing):
            raise FileNotFoundError(
                f"split {split!r}: {len(missing)} images have no ground truth (e.g. {missing['image_id'].iloc[0]}); "
                "for VOC train_aug this needs SegmentationClassAug"
            )
        targets[split] = dict(zip(table["image_id"], table["gt_path"]))
    return targets


def _rows_and_columns(method: str, stage: str, split: str, hist: np.ndarray, prefix: str) -> tuple[list[dict], dict]:
    result = scores(hist)
    rows = [
        {"method": method, "stage": stage, "split": split, "metric": metric, "value": result[metric]}
        for metric in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou")
    ]
    return rows, {f"{prefix}{split}": result["iou"]}


def evaluate_cams(
    cam_files: Sequence[str | Path],
    manifest_paths: Sequence[str | Path],
    dataset: Mapping[str, Any],
    alphas: Sequence[float],
    method: str,
    metrics_path: str | Path,
    per_class_path: str | Path,
    locking: Any = None,
    thresholds: Sequence[float] = (),
    oracle_threshold: str | Path | None = None,
) -> None:
    """mIoU of every CAM map of a method's contract shards on each evaluated split, for every background rule.

    ``oracle_threshold`` (a file of :func:`select_threshold`) replaces ``thresholds`` by the one chosen on
    ground truth.
    """
    if oracle_threshold is not None:
        thresholds = [read_threshold(oracle_threshold)]
    rules = background_rules(alphas, thresholds)
    classes = dataset_classes(dataset)
    n_class = len(classes) + 1
    targets = _eval_targets(manifest_paths)
    hists: dict[tuple[str, str, str], np.ndarray] = {}
    found = {split: 0 for split in targets}
    for image_id, stored in iter_images(cam_files, locking):
        wanted = [split for split, ids in targets.items() if image_id in ids]
        if not wanted:
            continue
        size = (int(stored["height"]), int(stored["width"]))
        gt = None
        for name in cam_shards.map_names(stored):
            for suffix, rule in rules:
                pred = cam_labels(stored[name], stored["keys"], size, **rule)
                for split in wanted:
                    gt = read_gt(targets[split][image_id]) if gt is None else gt
                    key = (name, split, suffix)
                    hists[key] = hists.get(key, 0) + confusion_matrix(gt, pred, n_class)
        for split in wanted:
            found[split] += 1
    for split, ids in targets.items():
        if found[split] != len(ids):
            raise ValueError(f"split {split!r}: {len(ids)} labelled images, but only {found[split]} have CAMs "
                             "(cam_eval splits must be subsets of splits.pseudo)")
    rows, columns = [], {}
    for (stage, split, suffix), hist in sorted(hists.items()):
        name = f"{stage}_{suffix}"
        stage_rows, stage_columns = _rows_and_columns(method, name, split, hist, f"{name}_")
        rows += stage_rows
        columns.update(stage_columns)
        log.info("%s on %s: mIoU %.4f", name, split, stage_rows[0]["value"])
    write_metrics(metrics_path, rows)
    write_per_class(per_class_path, ["background", *classes], columns)


def evaluate_label_maps(
    files: Sequence[str | Path],
    manifest_paths: Sequence[str | Path],
    dataset: Mapping[str, Any],
    method: str,
    stage_fields: Mapping[str, str],
    metrics_path: str | Path,
    per_class_path: str | Path,
    confidence_threshold: float | None = None,
    locking: Any = None,
) -> dict[tuple[str, str], dict]:
    """Score stored label maps (``stage_fields``: dataset name -> stage name) on each evaluated split.

    With a confidence threshold (pseudo masks), also report the ignored fraction and the accuracy of
    confident pixels against all pixels.
    """
    classes = dataset_classes(dataset)
    n_class = len(classes) + 1
    targets = _eval_targets(manifest_paths)
    hists: dict[tuple[str, str], np.ndarray] = {}
    confident = {split: np.zeros(2, dtype=np.int64) for split in targets}  # (correct, total) on confident pixels
    ignored = {split: np.zeros(2, dtype=np.int64) for split in targets}  # (ignored, scored) pixels
    found = {split: 0 for split in targets}
    for image_id, stored in iter_images(files, locking):
        wanted = [split for split, ids in targets.items() if image_id in ids]
        if not wanted:
            continue
        for split in wanted:
            found[split] += 1
            gt = read_gt(targets[split][image_id])
            for field, stage in stage_fields.items():
                hists[(stage, split)] = hists.get((stage, split), 0) + confusion_matrix(gt, stored[field], n_class)
            if confidence_threshold is not None:
                scored = gt < n_class
                labels = stored[next(iter(stage_fields))]
                sure = scored & (training_labels(labels, stored["confidence"], confidence_threshold) != IGNORE)
                confident[split] += [int((labels[sure] == gt[sure]).sum()), int(sure.sum())]
                ignored[split] += [int((scored & ~sure).sum()), int(scored.sum())]
    for split, ids in targets.items():
        if found[split] != len(ids):
            raise ValueError(f"split {split!r}: {len(ids)} labelled images, but {found[split]} have stored label maps")
    rows, columns, results = [], {}, {}
    for (stage, split), hist in sorted(hists.items()):
        stage_rows, stage_columns = _rows_and_columns(method, stage, split, hist, f"{stage}_")
        rows += stage_rows
        columns.update(stage_columns)
        results[(stage, split)] = scores(hist)
        log.info("%s on %s: mIoU %.4f", stage, split, stage_rows[0]["value"])
        if confidence_threshold is not None:
            correct, total = confident[split]
            n_ignored, n_scored = ignored[split]
            rows += [
                {"method": method, "stage": stage, "split": split, "metric": "confident_pixel_accuracy",
                 "value": correct / total if total else float("nan")},
                {"method": method, "stage": stage, "split": split, "metric": "ignored_fraction",
                 "value": n_ignored / n_scored if n_scored else float("nan")},
            ]
    write_metrics(metrics_path, rows)
    write_per_class(per_class_path, ["background", *classes], columns)
    return results


def evaluate_predictions(
    prediction_files: Sequence[str | Path],
    manifest_path: str | Path,
    dataset: Mapping[str, Any],
    method: str,
    metrics_path: str | Path,
    per_class_path: str | Path,
    per_class_md_path: str | Path,
    locking: Any = None,
) -> None:
    """Segmenter mIoU with and without test-time CRF; per-class IoU as CSV and Markdown."""
    with open_stage(prediction_files[0], locking) as handle:
        first = handle[image_ids(handle)[0]]
        fields = {"labels": "segmenter", **({"labels_crf": "segmenter_crf"} if "labels_crf" in first else {})}
    evaluate_label_maps(prediction_files, [manifest_path], dataset, method, fields, metrics_path,
                        per_class_path, locking=locking)
    import pandas as pd

    table = pd.read_csv(per_class_path)
    header = "| " + " | ".join(table.columns) + " |"
    lines = [header, "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        cells = [row[0]] + [f"{100 * v:.1f}" if v == v else "–" for v in row[1:]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    write_text_atomic(per_class_md_path, "IoU (%) per class\n\n" + "\n".join(lines) + "\n")


# The release's sweep of the background threshold against ground truth (SemPLeS spec §5.5, §7)
ORACLE_THRESHOLDS = tuple(round(0.40 + 0.01 * i, 2) for i in range(20))


def select_threshold(
    cam_files: Sequence[str | Path],
    manifest_paths: Sequence[str | Path],
    dataset: Mapping[str, Any],
    out_path: str | Path,
    thresholds: Sequence[float] = ORACLE_THRESHOLDS,
    locking: Any = None,
) -> float:
    """Oracle: the background threshold with the best final-CAM mIoU on the evaluated splits' ground truth.

    As the release does, the sweep runs upwards and stops at the first threshold that scores lower than
    the one before. Only for ``gt_select`` instances, whose results are then marked oracle.
    """
    n_class = len(dataset_classes(dataset)) + 1
    targets = _eval_targets(manifest_paths)
    hists = {threshold: 0 for threshold in thresholds}
    for image_id, stored in iter_images(cam_files, locking):
        paths = [ids[image_id] for ids in targets.values() if image_id in ids]
        if not paths:
            continue
        gt = read_gt(paths[0])
        for threshold in thresholds:
            pred = cam_labels(stored[cam_shards.FINAL_MAP], stored["keys"], gt.shape, threshold=threshold)
            hists[threshold] = hists[threshold] + confusion_matrix(gt, pred, n_class)
    swept: dict[float, float] = {}
    for threshold in thresholds:
        swept[threshold] = float(scores(hists[threshold])["miou"])
        if len(swept) > 1 and swept[threshold] < list(swept.values())[-2]:
            break
    best = max(swept, key=lambda t: (swept[t], -t))
    write_threshold(out_path, best, swept, sorted(targets))
    log.info("oracle background threshold %.2f (mIoU %.4f) on %s", best, swept[best], sorted(targets))
    return best
