"""Pseudo-mask PNG files: palette PNG read/write and the dataset layout segmenter code bases expect."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.atomic import atomic_output, write_text_atomic
from wsss.image_ids import invalid_id_reason
from wsss.palette import voc_palette

MASK_DIR = "SegmentationClassPseudo"
PREDICTION_DIR = "SegmentationClassPred"
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
    image_paths: Mapping[str, str | os.PathLike],
    split: str = "train",
    mask_dir: str = MASK_DIR,
    leading_slash: bool = True,
) -> Path:
    """Write masks as ``<out>/<mask_dir>/<id>.png`` and a list ``<out>/list/<split>.txt``; return the list path.

    Each list line is ``/JPEGImages/<image file name> /<mask_dir>/<id>.png``, with the image's own file
    name (any extension). ``<out>/JPEGImages`` makes ``<out>`` a self-contained dataset root: a relative
    link to the image folder when every image sits in one, else a folder of relative links, one per
    image. Files and folders are created with the process's umask, like ``open()``.

    - deeplab-pytorch (``libs/datasets/voc.py``, ``VOCAug``) reads
      ``<root>/ImageSets/SegmentationAug/<split>.txt``, splits each line on one space and joins
      ``root`` with each path **minus its first character**, which is why the paths carry a leading
      ``/`` (``leading_slash=False`` drops it, for readers that join the path as is). Copy or link the
      list there, or point ``root`` at ``<out>``; the label PNGs are read with PIL as raw indices, and
      255 is the ``ignore_label``.
    - mmsegmentation (``PascalVOCDataset`` / ``BaseSegDataset``) takes ``data_root=<out>``,
      ``data_prefix=dict(img_path='JPEGImages', seg_map_path=<mask_dir>)``, ``img_suffix`` the
      images' extension (one per dataset), ``seg_map_suffix='.png'``, and an ``ann_file`` listing bare
      ids one per line: we write that as ``<out>/list/<split>_ids.txt``. It also reads palette PNGs as
      indices and ignores 255.

    Masks are written atomically one by one; the list files are written last, so a complete list
    means all of its masks exist.
    """
    out = Path(out_dir)
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"export_layout: bad split name {split!r}")
    (out / mask_dir).mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    seen: set[str] = set()
    for image_id, labels in masks:
        image_id = str(image_id)
        if invalid_id_reason(image_id):
            raise ValueError(f"export_layout: bad image id {image_id!r} ({invalid_id_reason(image_id)})")
        if image_id in seen:
            raise ValueError(f"export_layout: duplicate image id {image_id!r}")
        if image_id not in image_paths:
            raise ValueError(f"export_layout: no image path for image id {image_id!r}")
        seen.add(image_id)
        save_label_png(out / mask_dir / f"{image_id}.png", _check_labels(labels, f"image {image_id}"))
        ids.append(image_id)
    sources = {image_id: Path(image_paths[image_id]) for image_id in ids}
    _link_images(out, sources)
    slash = "/" if leading_slash else ""
    lines = "".join(f"{slash}{IMAGE_DIR}/{sources[i].name} {slash}{mask_dir}/{i}.png\n" for i in ids)
    list_path = out / LIST_DIR / f"{split}.txt"
    write_text_atomic(list_path, lines)
    write_text_atomic(out / LIST_DIR / f"{split}_ids.txt", "".join(f"{i}\n" for i in ids))
    return list_path


def _link_images(out: Path, sources: Mapping[str, Path]) -> None:
    """Make <out>/JPEGImages show every source image under its own file name (see export_layout)."""
    for source in sources.values():
        if not source.is_file():
            raise FileNotFoundError(f"export_layout: image not found: {source}")
    link = out / IMAGE_DIR
    folders = {source.parent.resolve() for source in sources.values()}
    if len(folders) == 1:
        folder = folders.pop()
        if link.is_symlink() and link.resolve() == folder:
            return
        _clear(link)
        os.symlink(os.path.relpath(folder, out.resolve()), link, target_is_directory=True)
        return
    if link.is_symlink():
        link.unlink()
    link.mkdir(exist_ok=True)
    for source in sources.values():
        entry = link / source.name
        if entry.is_symlink() or entry.exists():
            entry.unlink()
        os.symlink(os.path.relpath(source.resolve(), link.resolve()), entry)


def _clear(link: Path) -> None:
    """Remove an earlier export's JPEGImages (a link, or a folder holding only links)."""
    if link.is_symlink():
        link.unlink()
    elif link.is_dir():
        if not all(entry.is_symlink() for entry in link.iterdir()):
            raise ValueError(f"export_layout: {link} holds files that are not links; not replacing it")
        shutil.rmtree(link)
