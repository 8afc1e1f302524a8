"""Checks of every file a manifest names, run once in the manifest rule before any expensive job.

Each image is fully decoded by the pipeline's one decoder and each ground-truth mask read as raw label
indices, so a truncated file, a mask of the wrong size or with values outside the class range, or an
image too large for the CAM stage is reported here, naming the file and the image id, instead of
failing hours later in a CAM, CRF or evaluation job.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from wsss.images import ImageDecodeError, decode_image
from wsss.masks_png import read_label_png

__all__ = ["FileCheck", "check_row", "check_files"]


@dataclass(frozen=True)
class FileCheck:
    """What the file checks need: label values allowed in ground truth and the pixel limit."""

    num_classes: int  # label values 0..num_classes-1 (background included) and 255 (ignore)
    max_pixels: int


def _image_pixels(path: str) -> tuple[int, int]:
    """(height, width) from the header only, so a huge image is rejected before it is decoded."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{path}: cannot decode image ({error})") from error
    return height, width


def check_row(image_path: str, height: int, width: int, gt_path: str, check: FileCheck) -> str:
    """Why one manifest row's files are unusable, or "" when they are fine."""
    try:
        header_h, header_w = _image_pixels(image_path)
        if header_h * header_w > check.max_pixels:
            return (f"{image_path}: image is {header_w}x{header_h} = {header_h * header_w} pixels, over "
                    f"dataset.max_pixels ({check.max_pixels}); downscale it (and its ground truth) or raise the limit")
        decoded = decode_image(image_path)
    except ImageDecodeError as error:
        return str(error)
    if decoded.shape[:2] != (height, width):
        return f"{image_path}: decoded size {decoded.shape[:2]} differs from the dataset's size {(height, width)}"
    if not gt_path:
        return ""
    try:
        labels = read_label_png(gt_path)
    except (OSError, SyntaxError, ValueError) as error:
        return f"{gt_path}: unreadable ground truth ({error})"
    if labels.shape != (height, width):
        return f"{gt_path}: ground truth is {labels.shape[1]}x{labels.shape[0]}, its image {image_path} is {width}x{height}"
    values = np.unique(labels)
    bad = values[(values >= check.num_classes) & (values != 255)]
    if bad.size:
        return (f"{gt_path}: ground-truth values {bad.tolist()[:8]} are outside the class range "
                f"0..{check.num_classes - 1} and not 255 (ignore)")
    return ""


def check_files(table: pd.DataFrame, check: FileCheck, workers: int = 1) -> dict[str, str]:
    """Image id -> reason for every row whose image or ground truth fails a check, in manifest order."""
    rows = list(table[["image_id", "image_path", "height", "width", "gt_path"]].itertuples(index=False))

    def one(row) -> str:
        return check_row(str(row.image_path), int(row.height), int(row.width), str(row.gt_path), check)

    # Decoding releases the GIL (PIL, zlib, libjpeg), so threads use every core the rule was given.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(one, rows))
    return {str(row.image_id): reason for row, reason in zip(rows, reasons) if reason}
