"""Tests for wsss.palette and wsss.masks_png: palette colours, PNG round trip, export layout."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(folder / name)
    return {Path(name).stem: folder / name for name in names}


def test_export_layout_deeplab_and_mmseg_lists(tmp_path):
    images = tmp_path / "VOC2012" / "JPEGImages"
    paths = _images(images, ["2007_000032.jpg", "2007_000039.jpg"])
    masks = [("2007_000032", np.full((5, 6), 1, dtype=np.uint8)), ("2007_000039", np.full((5, 6), 255, dtype=np.uint8))]
    out = tmp_path / "pseudo"
    list_path = export_layout(out, iter(masks), paths, split="train")
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
        assert os.path.isfile(os.path.join(out, image_rel[1:]))
    assert (out / "JPEGImages").is_symlink() and (out / "JPEGImages").resolve() == images.resolve()
    # idempotent re-export, and no leading slash on request
    export_layout(out, masks, paths, split="train", leading_slash=False)
    assert list_path.read_text().splitlines()[0] == "JPEGImages/2007_000032.jpg SegmentationClassPseudo/2007_000032.png"


def test_export_layout_lists_png_images_and_images_from_two_folders(tmp_path):
    paths = {**_images(tmp_path / "a", ["cat1.png", "dog2.png"]), **_images(tmp_path / "b" / "more", ["both.jpeg"])}
    masks = [(image_id, np.zeros((5, 6), np.uint8)) for image_id in ("cat1", "both", "dog2")]
    out = tmp_path / "export"
    lines = export_layout(out, masks, paths, split="train").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["/JPEGImages/cat1.png", "/JPEGImages/both.jpeg", "/JPEGImages/dog2.png"]
    for line in lines:  # every entry resolves to its own image, wherever it lives
        image = out / line.split()[0][1:]
        assert image.is_symlink() and image.resolve() == paths[Path(image.name).stem].resolve()
    # one folder again: the per-image links give way to a link to that folder
    export_layout(out, masks[:1], {"cat1": paths["cat1"]}, split="train")
    assert (out / "JPEGImages").is_symlink() and (out / "JPEGImages" / "cat1.png").is_file()


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_exported_files_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    paths = _images(tmp_path / "images", ["x.jpg"])
    previous = os.umask(umask)
    try:
        list_path = export_layout(tmp_path / "out", [("x", np.zeros((5, 6), np.uint8))], paths)
    finally:
        os.umask(previous)
    for path in (list_path, list_path.parent / "train_ids.txt", tmp_path / "out" / "SegmentationClassPseudo" / "x.png"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    for folder in (tmp_path / "out" / "SegmentationClassPseudo", list_path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == dir_mode, folder


def test_export_layout_rejects_bad_ids(tmp_path):
    mask = np.zeros((2, 2), dtype=np.uint8)
    paths = _images(tmp_path / "images", ["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match="duplicate image id 'a'"):
        export_layout(tmp_path / "out", [("a", mask), ("a", mask)], paths)
    with pytest.raises(ValueError, match="bad image id"):
        export_layout(tmp_path / "out", [("x/y", mask)], paths)
    with pytest.raises(ValueError, match="no image path for image id 'c'"):
        export_layout(tmp_path / "out", [("c", mask)], paths)
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        export_layout(tmp_path / "out", [("b", mask)], {"b": tmp_path / "gone.jpg"})
