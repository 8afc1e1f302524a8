"""Report figures: valid files, the palette and ignore colours, legends, absent classes, equal bytes for equal input."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsss.figures import (
    PRINT_DPI,
    colour_labels,
    confidence_figure,
    per_class_iou_figure,
    sample_strips_figure,
    training_figure,
)
from wsss.palette import voc_palette


def _png_size(path):
    with Image.open(path) as image:
        image.load()
        return image.format, image.size


def test_labels_are_coloured_with_the_voc_palette_and_ignore_is_white():
    labels = np.array([[0, 1], [15, 255]], np.uint8)
    colours = colour_labels(labels)
    palette = np.asarray(voc_palette(), np.uint8).reshape(-1, 3)
    assert colours.shape == (2, 2, 3) and colours.dtype == np.uint8
    assert colours[0, 0].tolist() == [0, 0, 0] and colours[0, 1].tolist() == palette[1].tolist()
    assert colours[1, 0].tolist() == palette[15].tolist() and colours[1, 1].tolist() == [255, 255, 255]


def test_every_figure_is_written_and_equal_input_gives_equal_bytes(tmp_path):
    bars = {"clip_es: cam_alpha1": [0.9, 0.4], "semples: cam_t0.43": [0.8, 0.3]}
    per_class_iou_figure(bars, ["background", "cat"], tmp_path / "a.svg", "x")
    per_class_iou_figure(bars, ["background", "cat"], tmp_path / "b.svg", "x")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    rng = np.random.default_rng(0)
    rows = [[("image", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)), ("CAM: cat", rng.random((20, 30)))],
            [("image", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))]]
    paths = [tmp_path / "strips.png", tmp_path / "strips.pdf"]
    sample_strips_figure(rows, ["a", "b"], {"background": 0, "cat": 1, "ignored": 255}, paths, "samples")
    confidence_figure(np.arange(50, dtype=float), 0.1, 0.95, tmp_path / "confidence.png", "c")
    per_class_iou_figure({}, [], tmp_path / "unscored.png", "a run without ground truth")
    training_figure(pd.DataFrame({"iteration": [2, 4], "loss": [1.0, 0.5], "lr": [0.01, 0.005]}),
                    tmp_path / "training.png", "t")
    for name in ("strips", "confidence", "training", "unscored"):
        fmt, (width, height) = _png_size(tmp_path / f"{name}.png")
        assert fmt == "PNG" and width > 100 and height > 100
    assert (tmp_path / "strips.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.svg", "b.svg", "confidence.png", "strips.pdf", "strips.png",
                                                           "training.png", "unscored.png"], "no temporaries left"


def test_sample_strips_are_at_print_resolution_with_a_legend_and_a_colour_bar(tmp_path):
    rows = [[("image", np.zeros((50, 50, 3), np.uint8)), ("CAM: cat", np.linspace(0, 1, 2500).reshape(50, 50))]]
    sample_strips_figure(rows, ["img0"], {"background": 0, "cat": 8}, [tmp_path / "s.png"], "samples")
    with Image.open(tmp_path / "s.png") as image:
        assert image.info["dpi"][0] == pytest.approx(PRINT_DPI, abs=1)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in pixels.tolist()}
    palette = np.asarray(voc_palette(), np.uint8).reshape(-1, 3)
    assert tuple(palette[8].tolist()) in colours, "the legend shows the class's label colour"
    jet = (np.asarray(matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3]) * 255).round().astype(int)
    near = np.abs(pixels[:, None, :].astype(int) - jet[[0, 255]][None]).max(axis=2) <= 2
    assert near[:, 0].any() and near[:, 1].any(), "both ends of the heat map's colour bar are drawn"


def test_absent_classes_are_written_absent_not_drawn_as_zero(tmp_path):
    bars = {"clip_es: crf": [0.9, np.nan, 0.0], "semples: crf": [0.8, np.nan, 0.25]}
    per_class_iou_figure(bars, ["background", "sofa", "cat"], tmp_path / "p.svg", "IoU per class: pseudo masks")
    svg = (tmp_path / "p.svg").read_text()
    assert svg.count(">absent<") == 2, "one mark per instance for the absent class, none for the 0 IoU"
    assert ">sofa<" in svg and ">clip_es: crf (mIoU 45.0)<" in svg and ">semples: crf (mIoU 52.5)<" in svg
