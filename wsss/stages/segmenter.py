"""Segmenter stages: train DeepLabV2 on the confidence-masked pseudo masks, predict a split shard by shard."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from wsss.atomic import atomic_output
from wsss.checkpoints import HISTORY_NAME
from wsss.crf import CrfConfig, crf_image, dense_crf, training_labels, unary_from_probabilities
from wsss.datasets import read_manifest, usable_rows
from wsss.devices import default_device
from wsss.h5store import (file_digest, image_ids, iter_images, normalise_locking, params_digest, open_stage, put_image,
                          set_image_order, write_stage)
from wsss.images import decode_image
from wsss.segmenter.predict import predict_probs
from wsss.segmenter.train import SegmenterConfig, load_predictor, train_segmenter
from wsss.progress import progress
from wsss.shards import shard_rows
from wsss.masks_png import PREDICTION_DIR
from wsss.stages.pseudo_masks import crf_config, publish_masks, recipe_threshold

log = logging.getLogger(__name__)


class PseudoMaskDataset(torch.utils.data.Dataset):
    """(image, training label) pairs: images from disk, labels from the CRF shards with the 255 rule applied."""

    def __init__(self, manifest_path: str | Path, crf_files: Sequence[str | Path], threshold: float,
                 locking: Any = None) -> None:
        table = read_manifest(manifest_path)
        paths = dict(zip(table["image_id"], table["image_path"]))
        self.items: list[tuple[str, str, str]] = []
        for crf_file in crf_files:
            with open_stage(crf_file, locking) as handle:
                self.items += [(image_id, paths[image_id], str(crf_file)) for image_id in image_ids(handle)]
        self.threshold = threshold
        self.locking = normalise_locking(locking)
        self._handles: dict[str, h5py.File] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, image_path, crf_file = self.items[index]
        # Handles are opened lazily per process, so DataLoader workers never share one.
        handle = self._handles.get(crf_file)
        if handle is None:
            handle = self._handles[crf_file] = h5py.File(crf_file, "r", locking=self.locking)
        group = handle[image_id]
        label = training_labels(group["labels"][()], group["confidence"][()], self.threshold)
        return {"image": decode_image(image_path), "label": label, "id": image_id}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def segmenter_config(train: Mapping[str, Any], n_classes: int, seed: int) -> SegmenterConfig:
    """Training settings from the config's ``segmenter.train`` section (the run's seed unless it sets one)."""
    return SegmenterConfig.from_dict({"seed": seed, **train, "n_classes": n_classes})


def run_training(
    manifest_path: str | Path,
    crf_files: Sequence[str | Path],
    train: Mapping[str, Any],
    n_classes: int,
    pseudo_masks: Mapping[str, Any],
    seed: int,
    checkpoint_dir: str | Path,
    out_path: str | Path,
    history_path: str | Path,
    locking: Any = None,
) -> None:
    """Train (resuming from ``checkpoint_dir`` if a checkpoint is there); publish the final weights and the
    loss history."""
    cfg = segmenter_config(train, n_classes, seed)
    threshold = recipe_threshold(pseudo_masks)
    dataset = PseudoMaskDataset(manifest_path, crf_files, threshold, locking)
    # Resume only a run with identical settings and pseudo masks: the folder is named by their digest.
    run_key = params_digest({"config": cfg.to_dict(), "threshold": threshold,
                             "inputs": [file_digest(p) for p in (manifest_path, *crf_files)]})[:16]
    run_dir = Path(checkpoint_dir) / run_key
    log.info("training %s on %d pseudo masks for %d iterations in %s", cfg.backbone, len(dataset),
             cfg.iterations, run_dir)
    final = train_segmenter(dataset, cfg, run_dir, log=log.info)
    for source, target in ((run_dir / HISTORY_NAME, history_path), (final, out_path)):
        with atomic_output(target) as tmp:
            shutil.copyfile(source, tmp)


def crf_labels(image_rgb: np.ndarray, probs: np.ndarray, cfg: CrfConfig) -> np.ndarray:
    """Test-time dense CRF on the segmenter's probabilities (same kernels and image mode as the pseudo masks)."""
    q = dense_crf(crf_image(image_rgb, cfg.image_mode), unary_from_probabilities(probs), cfg.params)
    return np.argmax(q, axis=0).astype(np.uint8)


def run_prediction(
    model_path: str | Path,
    manifest_path: str | Path,
    shard: str,
    shard_size: int,
    predict: Mapping[str, Any],
    out_path: str | Path,
    locking: Any = None,
) -> None:
    """Predict one shard of a split: multi-scale (+flip) probabilities, argmax, optional dense CRF."""
    model, normalisation = load_predictor(model_path, device=default_device())
    table, skipped = usable_rows(shard_rows(read_manifest(manifest_path), shard, shard_size), keep_unlabeled=True)
    scales = tuple(predict["scales"])
    flip = bool(predict["flip"])
    crf_settings = {k: v for k, v in predict["crf"].items() if k != "enabled"}
    crf = crf_config({**crf_settings, "mode": "prob_unary"}) if predict["crf"]["enabled"] else None
    params = dict(predict)
    with write_stage(out_path, "predictions", params, inputs=[model_path, manifest_path], locking=locking,
                     skipped=skipped) as out:
        for row in progress(table.itertuples(index=False), total=len(table), desc=f"prediction shard {shard}"):
            image = decode_image(row.image_path)
            probs = predict_probs(model, image, scales=scales, flip=flip, normalisation=normalisation)
            arrays = {"labels": np.argmax(probs, axis=0).astype(np.uint8)}
            if crf is not None:
                arrays["labels_crf"] = crf_labels(image, probs, crf)
            put_image(out, row.image_id, arrays, {"height": image.shape[0], "width": image.shape[1]})
        set_image_order(out, list(table["image_id"]))
    log.info("predicted shard %s: %d images (scales %s, flip %s, crf %s)", shard, len(table), scales, flip,
             crf is not None)


def export_predictions(prediction_files: Sequence[str | Path], manifest_path: str | Path, listing_path: str | Path,
                       locking: Any = None) -> None:
    """A split's final predictions (after the test-time CRF when it ran) as palette PNGs with image lists."""
    masks = ((image_id, stored.get("labels_crf", stored["labels"]))
             for image_id, stored in iter_images(prediction_files, locking))
    count = publish_masks(masks, manifest_path, listing_path, PREDICTION_DIR)
    log.info("exported %d predictions to %s", count, Path(listing_path).parent)
