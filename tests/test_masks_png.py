"""Tests for wsss.palette and wsss.masks_png: palette colours, PNG round trip, export layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from wsss.masks_png import export_layout, read_label_png, save_label_png
from wsss.palette import voc_palette


def test_voc_palette_known_colours():
    palette = voc_palette()
    assert len(palette) == 768 and all(isinstance(v, int) and 0 <= v <= 255 for v in palette)
    colour = lambda i: tuple(palette[3 * i : 3 * i + 3])  # noqa: E731
    assert colour(0) == (0, 0, 0)
    assert colour(1) == (128, 0, 0)  # aeroplane
    assert colour(2) == (0, 128, 0)
    assert colour(15) == (192, 128, 128)  # person
    assert colour(20) == (0, 64, 128)  # tvmonitor
    assert colour(255) == (224, 224, 192)  # ignore / boundary
    assert len(set(colour(i) for i in range(256))) == 256
    palette[0] = 99  # callers get their own copy
    assert voc_palette()[0] == 0


def test_png_round_trip_keeps_values_and_palette(tmp_path):
    labels = np.zeros((37, 53), dtype=np.uint8)
    labels[5:20, 7:30] = 15
    labels[25:, :] = 255
    labels[0, :21] = np.arange(21)
    labels[1, :10] = np.arange(71, 81)  # COCO-range values
    path = tmp_path / "sub" / "2007_000032.png"
    save_label_png(path, labels)
    with Image.open(path) as image:
        assert image.mode == "P" and image.size == (53, 37)
        assert image.getpalette()[:768] == voc_palette()
    back = read_label_png(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    # no temporary files are left behind
    assert os.listdir(path.parent) == ["2007_000032.png"]


def test_save_overwrites_atomically_and_rejects_bad_input(tmp_path):
    path = tmp_path / "a.png"
    save_label_png(path, np.full((4, 4), 3, dtype=np.uint8))
    save_label_png(path, np.full((4, 4), 255, dtype=np.uint8))
    assert read_label_png(path).tolist() == [[255] * 4] * 4
    with pytest.raises(ValueError, match="a.png"):
        save_label_png(path, np.zeros((4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="2-D uint8"):
        save_label_png(path, np.zeros((4, 4, 3), dtype=np.uint8))
    assert read_label_png(path).tolist() == [[255] * 4] * 4  # the failed writes left the old file
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


def test_read_label_png_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_label_png(tmp_path / "missing.png")
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((3, 3, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(ValueError, match="rgb.png"):
        read_label_png(rgb)


def test_export_layout_deeplab_and_mmseg_lists(tmp_path):
    images = tmp_path / "VOC2012" / "JPEGImages"
    images.mkdir(parents=True)
    masks = [("2007_000032", np.full((5, 6), 1, dtype=np.uint8)), ("2007_000039", np.full((5, 6), 255, dtype=np.uint8))]
    out = tmp_path / "pseudo"
    list_path = export_layout(out, iter(masks), split="train", image_dir=images)
    assert list_path == out / "list" / "train.txt"
    lines = list_path.read_text().splitlines()
    assert lines == [
        "/JPEGImages/2007_000032.jpg /SegmentationClassPseudo/2007_000032.png",
        "/JPEGImages/2007_000039.jpg /SegmentationClassPseudo/2007_000039.png",
    ]
    assert (out / "list" / "train_ids.txt").read_text().splitlines() == ["2007_000032", "2007_000039"]
    # deeplab-pytorch joins root with the path minus its first character
    for line in lines:
        image_rel, mask_rel = line.split(" ")
        np.testing.assert_array_equal(
            read_label_png(os.path.join(out, mask_rel[1:])), dict(masks)[mask_rel.split("/")[-1][:-4]]
        )
        assert os.path.dirname(os.path.join(out, image_rel[1:])) == str(out / "JPEGImages")
    assert (out / "JPEGImages").is_symlink() and (out / "JPEGImages").resolve() == images.resolve()
    # idempotent re-export, and no leading slash on request
    export_layout(out, masks, split="train", image_dir=images, leading_slash=False)
    assert list_path.read_text().splitlines()[0] == "JPEGImages/2007_000032.jpg SegmentationClassPseudo/2007_000032.png"


def test_export_layout_rejects_bad_ids(tmp_path):
    mask = np.zeros((2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="duplicate image id 'a'"):
        export_layout(tmp_path, [("a", mask), ("a", mask)])
    with pytest.raises(ValueError, match="bad image id"):
        export_layout(tmp_path, [("x/y", mask)])
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        export_layout(tmp_path, [("b", mask)], image_dir=tmp_path / "no_such_dir")
