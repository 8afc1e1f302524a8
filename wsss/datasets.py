"""Dataset adapters: VOC 2012, COCO 2014 and custom folders become one manifest table per split."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from wsss.atomic import atomic_output
from wsss.image_ids import invalid_id_reason

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["image_id", "image_path", "height", "width", "labels", "gt_path", "skip_reason"]
# skip_reason of a row whose files failed the manifest checks; "no labels" rows are still readable images
BAD_FILE_PREFIX = "bad file: "
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The CAM stage runs CLIP at the image's native size: attention memory grows with the square of the
# pixel count (ViT-B/16 at 1 MP: 3,900 tokens, 0.7 GB of fp32 attention per block). VOC and COCO images
# are at most 640x640 (0.41 MP).
DEFAULT_MAX_PIXELS = 1_000_000


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, image id or config key."""


def check_image_id(image_id: str, where: str) -> str:
    """Reject ids the pipeline cannot use as file, group and list names (:mod:`wsss.image_ids`)."""
    reason = invalid_id_reason(image_id)
    if reason:
        raise DatasetError(f"{where}: invalid image id {image_id!r} ({reason})")
    return image_id


def check_image_path(name: str, folder: Path, where: str) -> Path:
    """The image file ``name`` names inside ``folder``; DatasetError (with ``where``) for names the exports cannot use.

    A name may not leave the folder (an absolute path, or ``..`` that climbs out of it: the dataset is the
    folder, and a results tree must not pull in files from elsewhere; a symbolic link inside the folder is
    the way to include one), and may hold no whitespace: deeplab-pytorch's and mmsegmentation's list files
    separate their fields by spaces, so such a name cannot be written to ``list.txt``.
    """
    if any(char.isspace() for char in name):
        raise DatasetError(f"{where}: image file name {name!r} contains whitespace, which list.txt cannot hold "
                           "(its fields are separated by spaces): rename the file")
    relative = Path(os.path.normpath(name))
    if relative.is_absolute() or relative.parts[:1] == ("..",):
        raise DatasetError(f"{where}: image path {name!r} leaves the images folder {folder}; name files inside it "
                           "(a symbolic link there can point elsewhere)")
    return folder / relative


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Read a split list: one id per line (extra whitespace-separated fields, e.g. COCO labels, ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split list not found: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    for image_id in ids:
        check_image_id(image_id, str(path))
    _check_unique(ids, str(path))
    return ids


def _check_unique(ids: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for image_id in ids:
        if image_id in seen:
            raise DatasetError(f"{where}: duplicate image id {image_id!r}")
        seen.add(image_id)


# --- split ids (cheap; also used at DAG construction time to count shards) -------------------------


def split_ids(dataset: Mapping[str, Any], split: str) -> list[str]:
    """Ids of one split, in manifest order, without opening any image."""
    kind = dataset["kind"]
    if kind in ("voc", "demo"):
        return read_id_list(_voc_split_file(dataset, split))
    if kind == "coco":
        listed = (dataset.get("split_lists") or {}).get(split)
        if listed:
            return read_id_list(listed)
        image_dir = _coco_split(dataset, split)["images"]
        if not Path(image_dir).is_dir():
            raise DatasetError(f"dataset.splits.{split}.images: folder not found: {image_dir}")
        ids = sorted(Path(e.name).stem for e in os.scandir(image_dir) if e.name.lower().endswith(IMAGE_SUFFIXES))
        return ids
    if kind == "custom":
        return [check_image_id(Path(row["image"]).stem, str(_custom_split(dataset, split)["csv"]))
                for row in _read_custom_csv(_custom_split(dataset, split)["csv"])]
    raise DatasetError(f"dataset.kind: unknown dataset kind {kind!r}")


def split_source(dataset: Mapping[str, Any], split: str) -> Path:
    """The file (or image folder) that lists a split's images."""
    if dataset["kind"] == "custom":
        return Path(_custom_split(dataset, split)["csv"])
    listed = (dataset.get("split_lists") or {}).get(split)
    if listed:
        return Path(listed)
    if dataset["kind"] in ("voc", "demo"):
        return _voc_split_file(dataset, split)
    return Path(_coco_split(dataset, split)["images"])


def id_locations(dataset: Mapping[str, Any], split: str) -> dict[str, str]:
    """Image id -> ``file:line`` of the split list or CSV row naming it (the image folder for COCO without lists)."""
    source = split_source(dataset, split)
    if dataset["kind"] == "custom":
        with open(source, newline="") as handle:
            reader = csv.DictReader(handle)
            return {Path(row["image"]).stem: f"{source}:{reader.line_num}" for row in reader}
    if source.is_file():
        return {line.split()[0]: f"{source}:{n}" for n, line in enumerate(source.read_text().splitlines(), start=1)
                if line.strip()}
    return {image_id: str(source) for image_id in split_ids(dataset, split)}


def _voc_split_file(dataset: Mapping[str, Any], split: str) -> Path:
    listed = (dataset.get("split_lists") or {}).get(split)
    if listed:
        return Path(listed)
    return Path(dataset["root"]) / "ImageSets" / "Segmentation" / f"{split}.txt"


# --- VOC ------------------------------------------------------------------------------------------


def voc_labels_from_xml(xml_path: str | os.PathLike, classes: Sequence[str]) -> tuple[list[int], tuple[int, int] | None]:
    """Class indices of every <object><name> (difficult included), deduplicated in order, and <size> (H, W)."""
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise DatasetError(f"annotation not found: {xml_path}")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise DatasetError(f"{xml_path}: malformed XML ({error})") from error
    index = {name: i for i, name in enumerate(classes)}
    labels: list[int] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise DatasetError(f"{xml_path}: unknown class name {name!r} (known: {', '.join(classes)})")
        if index[name] not in labels:
            labels.append(index[name])
    size = root.find("size")
    hw = None
    if size is not None and size.findtext("height") and size.findtext("width"):
        hw = (int(size.findtext("height")), int(size.findtext("width")))
    return labels, hw


def voc_manifest(dataset: Mapping[str, Any], split: str, classes: Sequence[str]) -> pd.DataFrame:
    """Manifest of a VOC-layout split; labels from Annotations/*.xml, GT from SegmentationClassAug or SegmentationClass."""
    root = Path(dataset["root"])
    gt_dirs = [Path(dataset["gt_dir"])] if dataset.get("gt_dir") else [root / "SegmentationClassAug", root / "SegmentationClass"]
    rows = []
    for image_id in split_ids(dataset, split):
        image_path = root / "JPEGImages" / f"{image_id}.jpg"
        height, width = image_size(image_path)
        labels, xml_hw = voc_labels_from_xml(root / "Annotations" / f"{image_id}.xml", classes)
        if xml_hw is not None and height and xml_hw != (height, width):
            raise DatasetError(f"{image_path}: decoded size {(height, width)} differs from its XML <size> {xml_hw}")
        gt = next((d / f"{image_id}.png" for d in gt_dirs if (d / f"{image_id}.png").is_file()), None)
        rows.append(_row(image_id, image_path, height, width, labels, gt))
    return _table(rows)


# --- COCO -----------------------------------------------------------------------------------------


def _coco_split(dataset: Mapping[str, Any], split: str) -> Mapping[str, Any]:
    splits = dataset.get("splits") or {}
    if split not in splits:
        raise DatasetError(f"dataset.splits: no entry for split {split!r} (have {sorted(splits)})")
    return splits[split]


def coco_manifest(dataset: Mapping[str, Any], split: str, classes: Sequence[str]) -> pd.DataFrame:
    """Manifest of a COCO 2014 split; labels from the instances JSON, 80 classes in category-id order."""
    entry = _coco_split(dataset, split)
    json_path = Path(entry["annotations"])
    if not json_path.is_file():
        raise DatasetError(f"dataset.splits.{split}.annotations: file not found: {json_path}")
    with open(json_path) as handle:
        instances = json.load(handle)
    categories = sorted(instances["categories"], key=lambda c: c["id"])
    if len(categories) != len(classes):
        raise DatasetError(f"{json_path}: {len(categories)} categories, but the class list has {len(classes)}")
    contiguous = {c["id"]: i for i, c in enumerate(categories)}
    by_stem = {Path(im["file_name"]).stem: im for im in instances["images"]}
    labels_of: dict[int, list[int]] = {}
    for ann in instances["annotations"]:
        cls = contiguous.get(ann["category_id"])
        if cls is None:
            raise DatasetError(f"{json_path}: annotation {ann.get('id')} has unknown category id {ann['category_id']}")
        found = labels_of.setdefault(ann["image_id"], [])
        if cls not in found:
            found.append(cls)
    gt_dir = Path(entry["gt_dir"]) if entry.get("gt_dir") else None
    rows = []
    for image_id in split_ids(dataset, split):
        if image_id not in by_stem:
            raise DatasetError(f"{json_path}: image id {image_id!r} from the split list is not in the annotations")
        info = by_stem[image_id]
        image_path = check_image_path(info["file_name"], Path(entry["images"]), f"{json_path}: image {image_id!r}")
        if not image_path.is_file():
            raise DatasetError(f"image not found: {image_path}")
        gt = coco_gt_path(gt_dir, image_id) if gt_dir else None
        rows.append(_row(image_id, image_path, info["height"], info["width"], sorted(labels_of.get(info["id"], [])), gt))
    return _table(rows)


def coco_gt_path(gt_dir: Path, image_id: str) -> Path | None:
    """Find a COCO GT PNG under either naming in use (COCO_train2014_<12 digits>.png or <12 digits>.png)."""
    candidates = [gt_dir / f"{image_id}.png"]
    match = re.search(r"(\d{12})$", image_id)
    if match:
        candidates.append(gt_dir / f"{match.group(1)}.png")
    return next((c for c in candidates if c.is_file()), None)


# --- custom ---------------------------------------------------------------------------------------


def _custom_split(dataset: Mapping[str, Any], split: str) -> Mapping[str, Any]:
    splits = dataset.get("splits") or {}
    if split not in splits:
        raise DatasetError(f"dataset.splits: no entry for split {split!r} (have {sorted(splits)})")
    return splits[split]


def _read_custom_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label CSV not found: {path}")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"image", "labels"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: needs a header with columns 'image' and 'labels'")
        return list(reader)


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Read a class-name list, one name per line (blank lines and '#' comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class list not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: duplicate class names")
    return names


def custom_manifest(dataset: Mapping[str, Any], split: str, classes: Sequence[str]) -> pd.DataFrame:
    """Manifest of a custom split: an image folder plus a CSV ``image,labels`` (labels split by ';' or '|')."""
    entry = _custom_split(dataset, split)
    csv_path = Path(entry["csv"])
    image_dir = Path(entry["images"])
    gt_dir = Path(entry["gt_dir"]) if entry.get("gt_dir") else None
    index = {name: i for i, name in enumerate(classes)}
    rows, ids = [], []
    for line_no, record in enumerate(_read_custom_csv(csv_path), start=2):
        image_id = check_image_id(Path(record["image"]).stem, f"{csv_path}:{line_no}")
        image_path = check_image_path(record["image"], image_dir, f"{csv_path}:{line_no}: image {image_id!r}")
        ids.append(image_id)
        if not image_path.is_file():
            raise DatasetError(f"{csv_path}:{line_no}: image not found: {image_path}")
        labels: list[int] = []
        for name in filter(None, (n.strip() for n in re.split(r"[;|]", record["labels"] or ""))):
            if name not in index:
                raise DatasetError(f"{csv_path}:{line_no}: image {image_id!r} has unknown class name {name!r}")
            if index[name] not in labels:
                labels.append(index[name])
        height, width = image_size(image_path)
        gt = gt_dir / f"{image_id}.png" if gt_dir and (gt_dir / f"{image_id}.png").is_file() else None
        rows.append(_row(image_id, image_path, height, width, labels, gt))
    _check_unique(ids, str(csv_path))
    return _table(rows)


# --- common ---------------------------------------------------------------------------------------


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image, reading only its header; (0, 0) when the header is unreadable.

    An unreadable image is not an error here: the manifest's file checks decode every image and report
    it (or skip it, with ``dataset.on_bad_image: skip``) naming its line and id.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 0, 0
    return height, width


def _row(image_id: str, image_path: Path, height: int, width: int, labels: list[int], gt: Path | None) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "image_path": str(image_path),
        "height": int(height),
        "width": int(width),
        "labels": " ".join(str(i) for i in labels),
        "gt_path": str(gt) if gt else "",
        "skip_reason": "",
    }


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    _check_unique(list(table["image_id"]), "manifest")
    return table


def build_manifest(dataset: Mapping[str, Any], split: str, classes: Sequence[str], on_unlabeled: str = "skip") -> pd.DataFrame:
    """Build a split's manifest; images without labels are marked skipped (with a warning) or rejected."""
    builders = {"voc": voc_manifest, "demo": voc_manifest, "coco": coco_manifest, "custom": custom_manifest}
    if dataset["kind"] not in builders:
        raise DatasetError(f"dataset.kind: unknown dataset kind {dataset['kind']!r}")
    table = builders[dataset["kind"]](dataset, split, classes)
    unlabeled = table["labels"] == ""
    if unlabeled.any():
        examples = ", ".join(table.loc[unlabeled, "image_id"].head(5))
        if on_unlabeled == "fail":
            where = id_locations(dataset, split)
            first = table.loc[unlabeled, "image_id"].iloc[0]
            raise DatasetError(f"{where.get(first, split_source(dataset, split))}: image {first!r} has no labels "
                               f"(split {split!r}: {int(unlabeled.sum())} images without labels, e.g. {examples}); "
                               "set labels.on_unlabeled: skip to skip them")
        log.warning("split %s: skipping %d images without labels (e.g. %s)", split, int(unlabeled.sum()), examples)
        table.loc[unlabeled, "skip_reason"] = "no labels"
    return table


def usable_rows(table: pd.DataFrame, keep_unlabeled: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows a per-image stage processes, and image id -> skip reason for the others.

    Rows skipped for bad files are always left out; rows skipped for having no labels are kept when
    ``keep_unlabeled`` (stages that do not use labels, such as segmenter prediction).
    """
    reasons = table["skip_reason"]
    skip = reasons.str.startswith(BAD_FILE_PREFIX) if keep_unlabeled else reasons != ""
    return table[~skip], dict(zip(table.loc[skip, "image_id"], reasons[skip]))


def write_manifest(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a manifest as TSV atomically (temporary name, then rename)."""
    with atomic_output(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest TSV; ``labels`` becomes a list of class indices per row."""
    table = pd.read_csv(path, sep="\t", dtype={"image_id": str, "labels": str, "gt_path": str, "skip_reason": str},
                        keep_default_na=False)
    missing = set(MANIFEST_COLUMNS) - set(table.columns)
    if missing:
        raise DatasetError(f"{path}: not a manifest (missing columns {sorted(missing)})")
    table["labels"] = [[int(x) for x in s.split()] for s in table["labels"]]
    return table
