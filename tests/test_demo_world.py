"""Tests for the procedural VOC-formatted demo world (wsss.demo.world)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.demo import world as dw

SIZES = {"train": 12, "val": 6, "clip_pretrain": 6}
KW = dict(n_train=SIZES["train"], n_val=SIZES["val"], n_clip=SIZES["clip_pretrain"])


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_xml(path: Path) -> tuple[int, int, list[dict]]:
    tree = ET.parse(path).getroot()
    size = tree.find("size")
    w, h, d = (int(size.find(t).text) for t in ("width", "height", "depth"))
    assert d == 3
    objs = []
    for o in tree.findall("object"):
        box = o.find("bndbox")
        objs.append({
            "name": o.find("name").text,
            "pose": o.find("pose").text,
            "truncated": o.find("truncated").text,
            "difficult": o.find("difficult").text,
            "box": tuple(int(box.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")),
        })
    assert tree.find("filename").text == path.stem + ".jpg"
    return h, w, objs


def _split_ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dw") / "world"
    summary = dw.generate_demo_world(root, seed=3, **KW)
    return root, summary


def test_voc_palette_standard_colours():
    pal = dw.voc_palette()
    assert len(pal) == 768 and all(0 <= v <= 255 for v in pal)
    rgb = np.array(pal).reshape(256, 3)
    assert rgb[0].tolist() == [0, 0, 0]
    assert rgb[1].tolist() == [128, 0, 0]      # aeroplane in VOC
    assert rgb[15].tolist() == [192, 128, 128]  # person in VOC
    assert rgb[255].tolist() == [224, 224, 192]  # void / border
    assert len({tuple(c) for c in rgb}) == 256


def test_layout_and_splits(world):
    root, summary = world
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        assert (root / sub).is_dir()
    ids = {s: _split_ids(root, s) for s in dw.SPLITS}
    assert {s: len(v) for s, v in ids.items()} == SIZES
    flat = [i for v in ids.values() for i in v]
    assert len(set(flat)) == len(flat)  # disjoint splits, unique ids
    for i in flat:
        assert re.fullmatch(r"\d{4}_\d{6}", i)
    on_disk = {p.stem for p in (root / "JPEGImages").iterdir()}
    assert on_disk == set(flat)
    assert {p.stem for p in (root / "SegmentationClass").iterdir()} == set(flat)
    assert {p.stem for p in (root / "Annotations").iterdir()} == set(flat)
    # no temporary folders left beside the root
    assert [p.name for p in root.parent.iterdir()] == ["world"]
    assert summary["images"] == SIZES


def test_images_masks_and_xml_agree(world):
    root, _ = world
    palette = dw.voc_palette()
    for split in dw.SPLITS:
        for i in _split_ids(root, split):
            h, w, objs = _read_xml(root / "Annotations" / f"{i}.xml")
            img = Image.open(root / "JPEGImages" / f"{i}.jpg")
            png = Image.open(root / "SegmentationClass" / f"{i}.png")
            assert img.format == "JPEG" and img.mode == "RGB"
            assert png.format == "PNG" and png.mode == "P"
            assert png.getpalette()[:768] == palette
            assert img.size == png.size == (w, h)
            assert 88 <= h <= 120 and 88 <= w <= 120
            lab = np.asarray(png)
            xml_values = {dw.DEMO_CLASSES.index(o["name"]) + 1 for o in objs}
            png_values = set(np.unique(lab).tolist()) - {0, 255}
            assert png_values == xml_values, i
            for v in xml_values:
                assert (lab == v).sum() >= dw.MIN_CLASS_PIXELS
            assert 255 in lab  # border_width=1 draws outlines
            assert 1 <= len(xml_values) <= 3
            for o in objs:
                assert o["pose"] == "Unspecified" and o["difficult"] == "0" and o["truncated"] in ("0", "1")
                x0, y0, x1, y1 = o["box"]
                assert 1 <= x0 <= x1 <= w and 1 <= y0 <= y1 <= h
                # the 1-based box contains every visible pixel of a single-instance class
                if sum(p["name"] == o["name"] for p in objs) == 1:
                    ys, xs = np.nonzero(lab == dw.DEMO_CLASSES.index(o["name"]) + 1)
                    assert xs.min() + 1 >= x0 and xs.max() + 1 <= x1
                    assert ys.min() + 1 >= y0 and ys.max() + 1 <= y1


def test_captions_name_exactly_the_classes_and_background(world):
    root, _ = world
    caps = dw.read_captions(root)
    all_ids = [i for s in dw.SPLITS for i in _split_ids(root, s)]
    assert sorted(caps) == sorted(all_ids)
    bgs_seen = set()
    for i, cap in caps.items():
        _, _, objs = _read_xml(root / "Annotations" / f"{i}.xml")
        named = {c for c in dw.DEMO_CLASSES if re.search(rf"\b{c}\b", cap)}
        assert named == {o["name"] for o in objs}, (i, cap)
        bgs = [b for b in dw.DEMO_BACKGROUNDS if re.search(rf"\b{b}\b", cap)]
        assert len(bgs) == 1, (i, cap)
        bgs_seen.add(bgs[0])
        assert cap.endswith(".") and "\t" not in cap
    assert len(bgs_seen) >= 2


def test_world_json(world):
    root, summary = world
    meta = json.loads((root / "world.json").read_text())
    assert meta["classes"] == list(dw.DEMO_CLASSES)
    assert meta["backgrounds"] == list(dw.DEMO_BACKGROUNDS)
    assert meta["seed"] == 3 and meta["generator_version"] == dw.GENERATOR_VERSION
    assert meta["splits"] == SIZES
    # per-class image counts agree with the XML files
    for split in dw.SPLITS:
        counts = Counter()
        for i in _split_ids(root, split):
            counts.update({o["name"] for o in _read_xml(root / "Annotations" / f"{i}.xml")[2]})
        assert summary["class_images"][split] == {c: counts[c] for c in dw.DEMO_CLASSES}


def test_deterministic_bytes_and_seed_sensitivity(world, tmp_path):
    root, _ = world
    again = tmp_path / "again"
    dw.generate_demo_world(again, seed=3, **KW)
    assert _all_files(again) == _all_files(root)
    other = tmp_path / "other"
    dw.generate_demo_world(other, seed=4, **KW)
    a, b = _all_files(root), _all_files(other)
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] != b[k] for k in jpgs) == len(jpgs)


def test_refuses_non_empty_root_and_overwrites(tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    dw.generate_demo_world(root, n_train=2, n_val=1, n_clip=1)  # an empty folder is accepted
    with pytest.raises(FileExistsError, match="not empty"):
        dw.generate_demo_world(root, n_train=2, n_val=1, n_clip=1)
    (root / "stale.txt").write_text("x")
    dw.generate_demo_world(root, n_train=3, n_val=1, n_clip=0, overwrite=True)
    assert not (root / "stale.txt").exists()
    assert len(_split_ids(root, "train")) == 3 and _split_ids(root, "clip_pretrain") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = dw._write_example

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(dw, "_write_example", failing)
    root = tmp_path / "w"
    with pytest.raises(RuntimeError, match="simulated crash"):
        dw.generate_demo_world(root, n_train=4, n_val=1, n_clip=1)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, word", [
    (dict(min_size=20), "min_size"),
    (dict(min_size=100, max_size=90), "min_size"),
    (dict(max_objects=0), "max_objects"),
    (dict(border_width=-1), "border_width"),
    (dict(jpeg_quality=0), "jpeg_quality"),
    (dict(n_train=-1), "n_train"),
])
def test_bad_arguments(tmp_path, kwargs, word):
    args = dict(n_train=1, n_val=1, n_clip=1) | kwargs
    with pytest.raises(ValueError, match=word):
        dw.generate_demo_world(tmp_path / "w", **args)
    assert not (tmp_path / "w").exists()


def test_render_scene_is_pure_and_deterministic():
    a = dw.render_scene(np.random.default_rng(11), 70, 90)
    b = dw.render_scene(np.random.default_rng(11), 70, 90)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    img, lab, objs, bg = a
    assert img.shape == (70, 90, 3) and img.dtype == np.uint8
    assert lab.shape == (70, 90) and lab.dtype == np.uint8
    assert bg in dw.DEMO_BACKGROUNDS
    c = dw.render_scene(np.random.default_rng(12), 70, 90)
    assert not np.array_equal(img, c[0])


def test_border_band_lies_on_object_outlines():
    compared = 0
    for seed in range(12):
        img0, lab0, objs0, _ = dw.render_scene(np.random.default_rng(seed), 64, 64, border_width=0)
        img1, lab1, objs1, _ = dw.render_scene(np.random.default_rng(seed), 64, 64, border_width=1)
        assert 255 not in lab0
        if not np.array_equal(img0, img1):
            continue  # the thicker border forced a redraw; nothing to compare
        if len({o["name"] for o in objs0}) < len(objs0):
            continue  # two instances of one class: VOC outlines them apart, invisible in the class map
        compared += 1
        band = lab1 == 255
        assert band.any()
        assert np.array_equal(lab1[~band], lab0[~band])
        assert (lab0[band] > 0).all()  # a 1-px band sits on the object side of the outline
        # every band pixel touches (8-neighbourhood) a pixel of another value in the clean label
        pad = np.pad(lab0, 1, mode="edge")
        differs = np.zeros_like(band)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                differs |= pad[1 + dy:65 + dy, 1 + dx:65 + dx] != lab0
        assert differs[band].all()
        # and conversely every object pixel next to another instance or background is in the band
        assert band[differs & (lab0 > 0)].mean() > 0.9
    assert compared >= 6


def test_objects_stand_out_from_background():
    # image and mask come from one rendering: object pixels look different from the background
    contrasts = []
    for seed in range(40):
        img, lab, _, _ = dw.render_scene(np.random.default_rng(seed), 64, 64)
        f = img.astype(np.float64)
        bg = f[lab == 0].mean(axis=0)
        for v in set(np.unique(lab).tolist()) - {0, 255}:
            contrasts.append(np.abs(f[lab == v].mean(axis=0) - bg).max())
    assert np.median(contrasts) > 40


def test_cooccurrence_bias():
    joint = Counter()
    per_class = Counter()
    for seed in range(400):
        _, _, objs, bg = dw.render_scene(np.random.default_rng([99, seed]), 56, 56)
        for name in {o["name"] for o in objs}:
            per_class[name] += 1
            joint[name, bg] += 1
    assert all(per_class[c] >= 40 for c in dw.DEMO_CLASSES)
    assert joint["boat", "water"] / per_class["boat"] >= 0.6
    assert joint["aeroplane", "sky"] / per_class["aeroplane"] >= 0.55
    assert joint["cow", "grass"] / per_class["cow"] >= 0.5
    # people appear everywhere: no single background dominates
    assert max(joint["person", b] for b in dw.DEMO_BACKGROUNDS) / per_class["person"] < 0.4


def test_make_caption():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        cap = dw.make_caption(rng, ["aeroplane", "cow", "cow"], "brick wall")
        assert cap.count("aeroplane") == 1 and cap.count("cow") == 1 and "brick wall" in cap
        assert "an aeroplane" in cap and "a cow" in cap
        seen.add(cap)
    assert len(seen) > 3  # templates and object order vary
    with pytest.raises(ValueError, match="background"):
        dw.make_caption(rng, ["cow"], "moon")


def test_files_match_in_memory_rendering(world):
    # scene_rng + random_scene reproduce the written example (the demo-CLIP trainer relies on it)
    root, _ = world
    caps = dw.read_captions(root)
    ids = [i for s in dw.SPLITS for i in _split_ids(root, s)]
    for index in (0, len(ids) - 1):
        img, lab, objs, bg, cap = dw.random_scene(dw.scene_rng(3, index))
        i = ids[index]
        assert np.array_equal(lab, np.asarray(Image.open(root / "SegmentationClass" / f"{i}.png")))
        assert cap == caps[i] and bg in cap
        jpg = np.asarray(Image.open(root / "JPEGImages" / f"{i}.jpg")).astype(np.float64)
        assert np.abs(jpg - img).mean() < 6.0  # JPEG at quality 95 is close to the raw render
        _, _, xml_objs = _read_xml(root / "Annotations" / f"{i}.xml")
        assert [o["name"] for o in objs] == [o["name"] for o in xml_objs]
        assert [tuple(o["bbox"]) for o in objs] == [o["box"] for o in xml_objs]
