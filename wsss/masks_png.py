"""Pseudo-mask PNG files: palette PNG read/write and the dataset layout segmenter code bases expect."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.atomic import atomic_output, write_text_atomic
from wsss.image_ids import invalid_id_reason
from wsss.palette import voc_palette

MASK_DIR = "SegmentationClassPseudo"
IMAGE_DIR = "JPEGImages"
LIST_DIR = "list"


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Validate a 2-D uint8 label map."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 2 or 0 in labels.shape:
        raise ValueError(f"{where}: expected a non-empty 2-D uint8 label map, got {labels.dtype} {labels.shape}")
    return labels


def save_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a uint8 label map as a VOC-palette (mode "P") PNG, atomically; values (255 included) are kept as indices."""
    path = Path(path)
    labels = _check_labels(labels, f"label map for {path}")
    image = Image.fromarray(np.ascontiguousarray(labels))  # mode "L": the values as they are
    image.putpalette(voc_palette())  # turns the "L" image into "P" without touching the values
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (palette or greyscale) as its raw uint8 indices, not colours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label PNG not found: {path}")
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a palette or greyscale label PNG, got mode {image.mode}")
        # np.asarray on a "P" image gives the palette indices, which are the label values.
        labels = np.array(image)
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"{path}: could not read a 2-D uint8 label map (got {labels.dtype} {labels.shape})")
    return labels


def export_layout(
    out_dir: str | os.PathLike,
    masks: Iterable[tuple[str, np.ndarray]],
    split: str = "train",
    image_dir: str | os.PathLike | None = None,
    leading_slash: bool = True,
) -> Path:
    """Write masks as ``<out>/SegmentationClassPseudo/<id>.png`` and a list ``<out>/list/<split>.txt``; return the list path.

    Each list line is ``/JPEGImages/<id>.jpg /SegmentationClassPseudo/<id>.png``.

    - deeplab-pytorch (``libs/datasets/voc.py``, ``VOCAug``) reads
      ``<root>/ImageSets/SegmentationAug/<split>.txt``, splits each line on one space and joins
      ``root`` with each path **minus its first character**, which is why the paths carry a leading
      ``/`` (``leading_slash=False`` drops it, for readers that join the path as is). Copy or link the
      list there, or point ``root`` at ``<out>``; the label PNGs are read with PIL as raw indices, and
      255 is the ``ignore_label``.
    - mmsegmentation (``PascalVOCDataset`` / ``BaseSegDataset``) takes ``data_root=<out>``,
      ``data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassPseudo')``, suffixes
      ``.jpg`` / ``.png``, and an ``ann_file`` listing bare ids one per line: we write that as
      ``<out>/list/<split>_ids.txt``. It also reads palette PNGs as indices and ignores 255.

    ``image_dir``, if given, is linked as ``<out>/JPEGImages`` (a relative symlink) so that ``<out>``
    is a self-contained dataset root for both tools. Masks are written atomically one by one; the
    list files are written last, so a complete list means all of its masks exist.
    """
    out = Path(out_dir)
    mask_dir = out / MASK_DIR
    mask_dir.mkdir(parents=True, exist_ok=True)
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"export_layout: bad split name {split!r}")
    ids: list[str] = []
    seen: set[str] = set()
    for image_id, labels in masks:
        image_id = str(image_id)
        if invalid_id_reason(image_id):
            raise ValueError(f"export_layout: bad image id {image_id!r} ({invalid_id_reason(image_id)})")
        if image_id in seen:
            raise ValueError(f"export_layout: duplicate image id {image_id!r}")
        seen.add(image_id)
        save_label_png(mask_dir / f"{image_id}.png", _check_labels(labels, f"image {image_id}"))
        ids.append(image_id)
    if image_dir is not None:
        _link_images(out, Path(image_dir))
    slash = "/" if leading_slash else ""
    lines = "".join(f"{slash}{IMAGE_DIR}/{i}.jpg {slash}{MASK_DIR}/{i}.png\n" for i in ids)
    list_path = out / LIST_DIR / f"{split}.txt"
    write_text_atomic(list_path, lines)
    write_text_atomic(out / LIST_DIR / f"{split}_ids.txt", "".join(f"{i}\n" for i in ids))
    return list_path


def _link_images(out: Path, image_dir: Path) -> None:
    """Make <out>/JPEGImages point to image_dir (kept if it already points there)."""
    if not image_dir.is_dir():
        raise FileNotFoundError(f"export_layout: image folder not found: {image_dir}")
    link = out / IMAGE_DIR
    target = os.path.relpath(image_dir.resolve(), out.resolve())
    if link.is_symlink():
        if link.resolve() == image_dir.resolve():
            return
        link.unlink()
    elif link.exists():
        if link.resolve() == image_dir.resolve():
            return
        raise ValueError(f"export_layout: {link} exists and is not a link to {image_dir}")
    os.symlink(target, link, target_is_directory=True)
