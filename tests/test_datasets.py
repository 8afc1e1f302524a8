import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.datasets import (
    DatasetError,
    build_manifest,
    read_manifest,
    split_ids,
    write_manifest,
)

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def _jpg(path, height, width):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(path)


def _xml(path, names, height, width):
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = "".join(f"<object><name>{n}</name><difficult>{i % 2}</difficult></object>" for i, n in enumerate(names))
    path.write_text(f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
                    f"{objects}</annotation>")


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOC2012"
    images = {"2007_000032": ["aeroplane", "person", "aeroplane"], "2007_000039": ["tvmonitor"],
              "2007_000063": ["dog", "chair"]}
    for image_id, names in images.items():
        _jpg(root / "JPEGImages" / f"{image_id}.jpg", 30, 40)
        _xml(root / "Annotations" / f"{image_id}.xml", names, 30, 40)
    (root / "SegmentationClass").mkdir()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "SegmentationClass" / "2007_000032.png")
    (root / "SegmentationClassAug").mkdir()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "SegmentationClassAug" / "2007_000039.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n2007_000039\n2007_000063\n")
    return {"kind": "voc", "root": str(root)}


def test_voc_manifest_labels_sizes_and_gt(voc, tmp_path):
    table = build_manifest(voc, "train", VOC_CLASSES)
    assert list(table["image_id"]) == ["2007_000032", "2007_000039", "2007_000063"]
    # all objects (difficult included), deduplicated in order of first appearance
    assert list(table["labels"]) == ["0 14", "19", "11 8"]
    assert (table["height"] == 30).all() and (table["width"] == 40).all()
    # SegmentationClassAug preferred, SegmentationClass as fallback, empty when neither has the id
    assert table["gt_path"][0].endswith("SegmentationClass/2007_000032.png")
    assert table["gt_path"][1].endswith("SegmentationClassAug/2007_000039.png")
    assert table["gt_path"][2] == ""
    write_manifest(table, tmp_path / "m" / "train.tsv")
    back = read_manifest(tmp_path / "m" / "train.tsv")
    assert back["labels"].tolist() == [[0, 14], [19], [11, 8]]
    assert back["image_id"].tolist() == list(table["image_id"])


def test_voc_split_list_override(voc, tmp_path):
    listed = tmp_path / "train_aug.txt"
    listed.write_text("2007_000039\n")
    dataset = dict(voc, split_lists={"train_aug": str(listed)})
    assert split_ids(dataset, "train_aug") == ["2007_000039"]


def test_voc_errors_name_the_file(voc, tmp_path):
    root = tmp_path / "VOC2012"
    with pytest.raises(DatasetError, match="val.txt"):
        build_manifest(voc, "val", VOC_CLASSES)
    _xml(root / "Annotations" / "2007_000039.xml", ["unicorn"], 30, 40)
    with pytest.raises(DatasetError, match=r"2007_000039.xml.*unknown class name 'unicorn'"):
        build_manifest(voc, "train", VOC_CLASSES)
    _xml(root / "Annotations" / "2007_000039.xml", ["dog"], 31, 40)
    with pytest.raises(DatasetError, match=r"2007_000039.jpg.*differs from its XML"):
        build_manifest(voc, "train", VOC_CLASSES)
    (root / "Annotations" / "2007_000039.xml").unlink()
    with pytest.raises(DatasetError, match="annotation not found.*2007_000039.xml"):
        build_manifest(voc, "train", VOC_CLASSES)
    (root / "JPEGImages" / "2007_000063.jpg").unlink()
    _xml(root / "Annotations" / "2007_000039.xml", ["dog"], 30, 40)
    with pytest.raises(DatasetError, match="image not found.*2007_000063.jpg"):
        build_manifest(voc, "train", VOC_CLASSES)


@pytest.mark.parametrize("bad_id", ["../etc/passwd", "a/b", "a\\b", ".hidden", "a\x01b"])
def test_ids_that_cannot_name_files_are_rejected(voc, tmp_path, bad_id):
    (tmp_path / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").write_text(f"2007_000032\n{bad_id}\n")
    with pytest.raises(DatasetError, match="invalid image id"):
        build_manifest(voc, "train", VOC_CLASSES)


def test_duplicate_ids_are_rejected(voc, tmp_path):
    (tmp_path / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000032\n")
    with pytest.raises(DatasetError, match="duplicate image id '2007_000032'"):
        build_manifest(voc, "train", VOC_CLASSES)


def test_unlabeled_images_skip_or_fail(voc, tmp_path, caplog):
    _xml(tmp_path / "VOC2012" / "Annotations" / "2007_000039.xml", [], 30, 40)
    table = build_manifest(voc, "train", VOC_CLASSES, on_unlabeled="skip")
    assert list(table["skip_reason"]) == ["", "no labels", ""]
    assert "skipping 1 images without labels" in caplog.text
    with pytest.raises(DatasetError, match=r"train.txt:2: image '2007_000039' has no labels.*1 images without"):
        build_manifest(voc, "train", VOC_CLASSES, on_unlabeled="fail")


def _coco(tmp_path, with_list=False):
    images_dir = tmp_path / "train2014"
    ids = {9: "COCO_train2014_000000000009", 25: "COCO_train2014_000000000025", 30: "COCO_train2014_000000000030"}
    for image_id, stem in ids.items():
        _jpg(images_dir / f"{stem}.jpg", 20, 24)
    categories = [{"id": cid, "name": f"c{cid}"} for cid in (90, 1, 2, 5)]  # unsorted on purpose
    annotations = [
        {"id": 1, "image_id": 9, "category_id": 90},
        {"id": 2, "image_id": 9, "category_id": 1},
        {"id": 3, "image_id": 9, "category_id": 90},
        {"id": 4, "image_id": 25, "category_id": 5},
    ]
    doc = {"images": [{"id": i, "file_name": f"{s}.jpg", "height": 20, "width": 24} for i, s in ids.items()],
           "annotations": annotations, "categories": categories}
    json_path = tmp_path / "instances_train2014.json"
    json_path.write_text(json.dumps(doc))
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(gt_dir / "000000000009.png")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(gt_dir / "COCO_train2014_000000000025.png")
    dataset = {"kind": "coco", "splits": {"train": {"images": str(images_dir), "annotations": str(json_path),
                                                     "gt_dir": str(gt_dir)}}}
    if with_list:
        listed = tmp_path / "train.txt"
        listed.write_text("COCO_train2014_000000000025 3\nCOCO_train2014_000000000009 0 1\n")
        dataset["split_lists"] = {"train": str(listed)}
    return dataset


def test_coco_manifest_contiguous_classes_and_gt_naming(tmp_path):
    dataset = _coco(tmp_path)
    table = build_manifest(dataset, "train", ["a", "b", "c", "d"])
    assert list(table["image_id"]) == ["COCO_train2014_000000000009", "COCO_train2014_000000000025",
                                       "COCO_train2014_000000000030"]
    # category ids 1, 2, 5, 90 -> 0, 1, 2, 3
    assert list(table["labels"]) == ["0 3", "2", ""]
    assert list(table["skip_reason"]) == ["", "", "no labels"]
    assert table["gt_path"][0].endswith("000000000009.png")
    assert table["gt_path"][1].endswith("COCO_train2014_000000000025.png")
    assert table["gt_path"][2] == ""


def test_coco_split_list_order_and_errors(tmp_path):
    dataset = _coco(tmp_path, with_list=True)
    table = build_manifest(dataset, "train", ["a", "b", "c", "d"])
    assert list(table["image_id"]) == ["COCO_train2014_000000000025", "COCO_train2014_000000000009"]
    with pytest.raises(DatasetError, match="4 categories, but the class list has 80"):
        build_manifest(dataset, "train", [str(i) for i in range(80)])
    with pytest.raises(DatasetError, match="no entry for split 'val'"):
        build_manifest(dataset, "val", ["a", "b", "c", "d"])
    (tmp_path / "train.txt").write_text("COCO_train2014_000000000099\n")
    with pytest.raises(DatasetError, match="000000000099.*not in the annotations"):
        build_manifest(dataset, "train", ["a", "b", "c", "d"])


def _custom(tmp_path, rows):
    images = tmp_path / "imgs"
    for name in ("cat1.jpg", "dog2.png", "both.jpg"):
        _jpg(images / name, 10, 12)
    (tmp_path / "classes.txt").write_text("# my classes\ncat\ndog\n")
    (tmp_path / "train.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    return {"kind": "custom", "class_list": str(tmp_path / "classes.txt"),
            "splits": {"train": {"images": str(images), "csv": str(tmp_path / "train.csv")}}}


def test_custom_manifest_separators(tmp_path):
    dataset = _custom(tmp_path, ["cat1.jpg,cat", "dog2.png,dog", "both.jpg,dog;cat"])
    table = build_manifest(dataset, "train", ["cat", "dog"])
    assert list(table["image_id"]) == ["cat1", "dog2", "both"]
    assert list(table["labels"]) == ["0", "1", "1 0"]
    dataset = _custom(tmp_path, ["both.jpg,cat|dog"])
    assert list(build_manifest(dataset, "train", ["cat", "dog"])["labels"]) == ["0 1"]


def test_custom_errors(tmp_path):
    dataset = _custom(tmp_path, ["cat1.jpg,cat", "both.jpg,horse"])
    with pytest.raises(DatasetError, match=r"train.csv:3: image 'both' has unknown class name 'horse'"):
        build_manifest(dataset, "train", ["cat", "dog"])
    dataset = _custom(tmp_path, ["cat1.jpg,cat", "missing.jpg,cat"])
    with pytest.raises(DatasetError, match=r"train.csv:3: image not found.*missing.jpg"):
        build_manifest(dataset, "train", ["cat", "dog"])
    dataset = _custom(tmp_path, ["cat1.jpg,cat", "cat1.jpg,dog"])
    with pytest.raises(DatasetError, match="duplicate image id 'cat1'"):
        build_manifest(dataset, "train", ["cat", "dog"])
    dataset = _custom(tmp_path, ["cat1.jpg,cat", "dog2.png,"])
    with pytest.raises(DatasetError, match=r"train.csv:3: image 'dog2' has no labels.*without labels.*dog2"):
        build_manifest(dataset, "train", ["cat", "dog"], on_unlabeled="fail")
    (tmp_path / "train.csv").write_text("file,classes\ncat1.jpg,cat\n")
    with pytest.raises(DatasetError, match="columns 'image' and 'labels'"):
        build_manifest(dataset, "train", ["cat", "dog"])


@pytest.mark.parametrize("name", ["odd.j pg", "sub dir/cat1.jpg", "odd.jpg\t"])
def test_whitespace_in_an_image_file_name_is_refused_naming_the_line(tmp_path, name):
    # whitespace in the id itself is refused as an invalid id; here it sits outside the stem
    dataset = _custom(tmp_path, ["cat1.jpg,cat", f"{name},dog"])
    images = Path(dataset["splits"]["train"]["images"])
    (images / name).parent.mkdir(parents=True, exist_ok=True)
    (images / name).write_bytes((images / "cat1.jpg").read_bytes())
    with pytest.raises(DatasetError, match=r"train.csv:3: image .* contains whitespace, which list.txt cannot hold"):
        build_manifest(dataset, "train", ["cat", "dog"])


@pytest.mark.parametrize("name", ["../outside.jpg", "sub/../../outside.jpg", "/tmp/outside.jpg"])
def test_image_paths_that_leave_the_images_folder_are_refused(tmp_path, name):
    dataset = _custom(tmp_path, ["cat1.jpg,cat", f"{name},dog"])
    _jpg(tmp_path / "outside.jpg", 10, 12)
    with pytest.raises(DatasetError, match=r"train.csv:3: image 'outside': image path .* leaves the images folder"):
        build_manifest(dataset, "train", ["cat", "dog"])


def test_paths_inside_the_images_folder_and_links_there_are_accepted(tmp_path):
    dataset = _custom(tmp_path, ["sub/../cat1.jpg,cat", "linked.jpg,dog"])
    _jpg(tmp_path / "elsewhere.jpg", 10, 12)
    (Path(dataset["splits"]["train"]["images"]) / "linked.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    assert list(build_manifest(dataset, "train", ["cat", "dog"])["image_id"]) == ["cat1", "linked"]


def test_coco_file_names_are_checked_too(tmp_path):
    dataset = _coco(tmp_path)
    doc = json.loads(Path(dataset["splits"]["train"]["annotations"]).read_text())
    doc["images"][0]["file_name"] = "../COCO_train2014_000000000009.jpg"
    Path(dataset["splits"]["train"]["annotations"]).write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"instances_train2014.json: image 'COCO_train2014_000000000009'.*leaves"):
        build_manifest(dataset, "train", ["a", "b", "c", "d"])
