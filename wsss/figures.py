"""Figures for the run report: per-class IoU, sample strips, pseudo-mask confidence, training curves.

Each function takes arrays or tables and writes one PNG atomically; matplotlib runs headless (Agg).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: jobs run without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from wsss.atomic import atomic_output  # noqa: E402
from wsss.palette import voc_palette  # noqa: E402

__all__ = ["colour_labels", "per_class_iou_figure", "sample_strips_figure", "confidence_figure", "training_figure"]


def _save(figure: plt.Figure, path: str | os.PathLike) -> None:
    """Write a figure as PNG atomically (fixed metadata, so equal figures give equal bytes) and close it."""
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    plt.close(figure)


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) label indices -> (H, W, 3) uint8 in the VOC palette (255, ignore, is white)."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(-1, 3).copy()
    palette[255] = 255
    return palette[labels]


def per_class_iou_figure(tables: Mapping[str, pd.DataFrame], path: str | os.PathLike, title: str) -> None:
    """One horizontal bar chart per stage: IoU of every class (the first score column of each per-class table)."""
    if not tables:  # a run without ground truth scores nothing; the report says so
        figure, axis = plt.subplots(figsize=(5, 1.2))
        axis.axis("off")
        axis.text(0.5, 0.5, f"{title}: no split with ground truth was scored", ha="center", va="center", fontsize=9)
        _save(figure, path)
        return
    stages = list(tables)
    classes = list(next(iter(tables.values()))["class"])
    figure, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages) + 1.5, 0.28 * len(classes) + 1.2),
                                sharey=True, squeeze=False)
    for axis, stage in zip(axes[0], stages):
        table = tables[stage]
        column = [c for c in table.columns if c != "class"][0]
        values = 100 * table[column].to_numpy(dtype=float)
        axis.barh(range(len(values)), values, color="#4c72b0")
        axis.set_title(f"{stage}\n({column}, mIoU {np.nanmean(values):.1f})", fontsize=8)
        axis.set_xlim(0, 100)
        axis.set_xlabel("IoU (%)", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0][0].set_yticks(range(len(classes)), classes)
    axes[0][0].invert_yaxis()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    _save(figure, path)


def sample_strips_figure(rows: Sequence[Mapping[str, np.ndarray]], columns: Sequence[str],
                         path: str | os.PathLike, title: str) -> None:
    """One row per image, one panel per column name (RGB arrays, or float maps shown as heat maps)."""
    figure, axes = plt.subplots(len(rows), len(columns), figsize=(1.9 * len(columns), 1.9 * len(rows) + 0.4),
                                squeeze=False)
    for r, row in enumerate(rows):
        for c, name in enumerate(columns):
            axis = axes[r][c]
            axis.axis("off")
            if r == 0:
                axis.set_title(name, fontsize=8)
            panel = row.get(name)
            if panel is None:
                continue
            if panel.ndim == 2:
                axis.imshow(panel, cmap="jet", vmin=0.0, vmax=1.0)
            else:
                axis.imshow(panel)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    _save(figure, path)


def confidence_figure(counts: np.ndarray, ignored: float, threshold: float, path: str | os.PathLike,
                      title: str) -> None:
    """Histogram (counts over equal bins of 0..1) of the CRF's per-pixel confidence, with the threshold
    below which pixels are ignored and the fraction ``ignored`` they make up."""
    figure, axis = plt.subplots(figsize=(5, 3))
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    axis.stairs(counts, edges, fill=True, color="#4c72b0")
    axis.axvline(threshold, color="#c44e52", linestyle="--", label=f"ignored below {threshold:g}")
    axis.set_title(f"{title}: {100 * ignored:.1f}% of all pixels ignored", fontsize=9)
    axis.set_xlabel("confidence (max CRF probability)", fontsize=8)
    axis.set_ylabel("pixels (log scale)", fontsize=8)
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def training_figure(history: pd.DataFrame, path: str | os.PathLike, title: str) -> None:
    """Loss and learning rate against iteration, from a loss_history.csv."""
    figure, (loss_axis, lr_axis) = plt.subplots(1, 2, figsize=(8, 3))
    loss_axis.plot(history["iteration"], history["loss"], color="#4c72b0")
    loss_axis.set_xlabel("iteration", fontsize=8)
    loss_axis.set_ylabel("loss", fontsize=8)
    lr_axis.plot(history["iteration"], history["lr"], color="#55a868")
    lr_axis.set_xlabel("iteration", fontsize=8)
    lr_axis.set_ylabel("learning rate", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    _save(figure, path)
