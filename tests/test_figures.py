"""Report figures: valid PNGs, the palette and ignore colours, equal bytes for equal input."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from wsss.figures import colour_labels, confidence_figure, per_class_iou_figure, sample_strips_figure, training_figure
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


def test_every_figure_is_a_png_and_equal_input_gives_equal_bytes(tmp_path):
    tables = {"CAMs": pd.DataFrame({"class": ["background", "cat"], "cam_train": [0.9, 0.4]}),
              "segmenter": pd.DataFrame({"class": ["background", "cat"], "segmenter_val": [0.8, np.nan]})}
    per_class_iou_figure(tables, tmp_path / "a.png", "x")
    per_class_iou_figure(tables, tmp_path / "b.png", "x")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    rng = np.random.default_rng(0)
    rows = [{"image": rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), "CAM": rng.random((20, 30))},
            {"image": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)}]
    sample_strips_figure(rows, ["image", "CAM"], tmp_path / "strips.png", "samples")
    confidence_figure(np.arange(50, dtype=float), 0.1, 0.95, tmp_path / "confidence.png", "c")
    per_class_iou_figure({}, tmp_path / "unscored.png", "a run without ground truth")
    training_figure(pd.DataFrame({"iteration": [2, 4], "loss": [1.0, 0.5], "lr": [0.01, 0.005]}),
                    tmp_path / "training.png", "t")
    for name in ("a", "strips", "confidence", "training", "unscored"):
        fmt, (width, height) = _png_size(tmp_path / f"{name}.png")
        assert fmt == "PNG" and width > 100 and height > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "confidence.png", "strips.png",
                                                           "training.png", "unscored.png"], "no temporaries left"
