"""Figures for the run report: per-class IoU, sample strips, pseudo-mask confidence, training curves, rule graph.

Each function takes arrays or tables and writes its files atomically (PNG, SVG or PDF by suffix);
matplotlib runs headless (Agg).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: jobs run without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Patch  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from wsss.atomic import atomic_output  # noqa: E402
from wsss.palette import voc_palette  # noqa: E402

__all__ = ["colour_labels", "per_class_iou_figure", "sample_strips_figure", "confidence_figure", "training_figure",
           "rule_graph_figure", "PRINT_DPI"]

PRINT_DPI = 200  # raster figures at print resolution; PDF and SVG are vector
HEAT_MAP = "jet"
# Deterministic files: no dates, fixed element ids; SVG text stays text (searchable, selectable).
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
             "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}
_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "wsss", "pdf.fonttype": 42}


def _save(figure: plt.Figure, *paths: str | os.PathLike) -> None:
    """Write a figure atomically in the format of each path's suffix (PNG at PRINT_DPI, SVG, PDF) and close it.

    Fixed metadata, so equal figures give equal bytes.
    """
    with plt.rc_context(_STYLE):
        for path in paths:
            fmt = os.fspath(path).rsplit(".", 1)[-1].lower()
            with atomic_output(path) as tmp:
                figure.savefig(tmp, format=fmt, dpi=PRINT_DPI, metadata=_METADATA[fmt])
    plt.close(figure)


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) label indices -> (H, W, 3) uint8 in the VOC palette (255, ignore, is white)."""
    palette = _palette()
    return palette[labels]


def _palette() -> np.ndarray:
    """(256, 3) uint8 label colours: the VOC palette, with 255 (ignore) white."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(-1, 3).copy()
    palette[255] = 255
    return palette


def _message(text: str, path: str | os.PathLike) -> None:
    """A small figure holding one line of text (what a figure shows when there is nothing to plot)."""
    figure, axis = plt.subplots(figsize=(5, 1.2))
    axis.axis("off")
    axis.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    _save(figure, path)


def per_class_iou_figure(bars: Mapping[str, Sequence[float]], classes: Sequence[str], path: str | os.PathLike,
                         title: str) -> None:
    """Per-class IoU of one stage with one bar per series in each class's group (legend: series name and mIoU).

    A NaN is a class absent from the scored split (neither in the ground truth nor predicted): it is
    written "absent", not drawn as a zero-length bar.
    """
    if not bars:  # a run without ground truth scores nothing; the report says so
        _message(f"{title}: no split with ground truth was scored", path)
        return
    names = list(bars)
    step = 0.8 / len(names)
    figure, axis = plt.subplots(figsize=(7.5, 0.16 * len(classes) * len(names) + 0.3 * len(classes) + 1.6))
    colours = plt.get_cmap("tab10")
    for n, name in enumerate(names):
        values = 100 * np.asarray(bars[name], dtype=float)
        rows = np.arange(len(classes)) - 0.4 + step * (n + 0.5)
        label = f"{name} (mIoU {np.nanmean(values):.1f})" if np.isfinite(values).any() else name
        axis.barh(rows, np.nan_to_num(values), height=step * 0.9, color=colours(n % 10), label=label)
        for row, value in zip(rows, values):
            if np.isnan(value):
                axis.text(1, row, "absent", va="center", ha="left", fontsize=6, color="#666666", style="italic")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_ylim(len(classes) - 0.5, -0.5)  # first class on top
    axis.set_xlim(0, 100)
    axis.set_xlabel("IoU (%)", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(axis="x", color="#dddddd", linewidth=0.5)
    axis.set_axisbelow(True)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.4 / (0.3 * len(classes) + 1)), ncol=2,
                frameon=False)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    _save(figure, path)


def sample_strips_figure(rows: Sequence[Sequence[tuple[str, np.ndarray]]], row_names: Sequence[str],
                         legend: Mapping[str, int], paths: Sequence[str | os.PathLike], title: str) -> None:
    """One row per image of titled panels (RGB arrays, or float maps in 0..1 drawn as heat maps), with a
    colour bar for the heat maps and a legend of the label colours (name -> label value)."""
    columns = max(len(row) for row in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.7 * columns + 1.2, 1.75 * len(rows) + 0.9),
                                squeeze=False, layout="constrained")
    for r, (row, row_name) in enumerate(zip(rows, row_names)):
        for c in range(columns):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c >= len(row):
                axis.axis("off")
                continue
            name, panel = row[c]
            axis.set_title(name, fontsize=7)
            if panel.ndim == 2:
                axis.imshow(panel, cmap=HEAT_MAP, vmin=0.0, vmax=1.0, interpolation="bilinear")
            else:
                axis.imshow(panel, interpolation="nearest")
        axes[r][0].set_ylabel(row_name, fontsize=7)
    heat = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=HEAT_MAP)
    bar = figure.colorbar(heat, ax=axes, shrink=0.5, aspect=30, pad=0.01)
    bar.set_label("class activation (scaled per map)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    palette = _palette() / 255.0
    handles = [Patch(facecolor=palette[value], edgecolor="#444444", linewidth=0.4, label=name)
               for name, value in legend.items()]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)
    figure.suptitle(title, fontsize=9)
    _save(figure, *paths)


def confidence_figure(counts: np.ndarray, ignored: float, threshold: float, path: str | os.PathLike,
                      title: str) -> None:
    """Histogram (counts over equal bins of 0..1) of the refiner's per-pixel confidence, with the threshold
    below which pixels are ignored and the fraction ``ignored`` they make up."""
    figure, axis = plt.subplots(figsize=(5, 3))
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    axis.stairs(counts, edges, fill=True, color="#4c72b0")
    axis.axvline(threshold, color="#c44e52", linestyle="--", label=f"ignored below {threshold:g}")
    axis.set_title(f"{title}: {100 * ignored:.1f}% of all pixels ignored", fontsize=9)
    axis.set_xlabel("confidence (the winning class's probability or share)", fontsize=8)
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


_BOX_HALF_HEIGHT = 0.2  # a rule's box, in layers


def rule_graph_figure(layout: Mapping[str, tuple[int, float]], edges: Iterable[tuple[str, str]],
                      path: str | os.PathLike, title: str) -> None:
    """The rule graph as boxes in layers (top: the first rules), an arrow from each producer to its consumer."""
    layers = max(index for index, _ in layout.values()) + 1
    widest = max(sum(1 for i, _ in layout.values() if i == index) for index in range(layers))
    figure, axis = plt.subplots(figsize=(max(2.0 * widest, 5.0), 0.62 * layers + 0.6))
    axis.axis("off")
    axis.set_xlim(-widest / 2 - 0.1, widest / 2 + 0.1)
    axis.set_ylim(-layers + 0.4, 0.6)
    for name, (index, x) in layout.items():
        axis.text(x, -index, name, ha="center", va="center", fontsize=7, family="sans-serif",
                  bbox={"boxstyle": "round,pad=0.35", "facecolor": "#eef3fb", "edgecolor": "#4c72b0"})
    for source, target in sorted(edges):
        # from the bottom edge of the producer's box to the top edge of the consumer's
        axis.add_patch(FancyArrowPatch(posA=(layout[source][1], -layout[source][0] - _BOX_HALF_HEIGHT),
                                       posB=(layout[target][1], -layout[target][0] + _BOX_HALF_HEIGHT),
                                       arrowstyle="-|>", mutation_scale=7, color="#888888", linewidth=0.7,
                                       shrinkA=0, shrinkB=0))
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    _save(figure, path)
