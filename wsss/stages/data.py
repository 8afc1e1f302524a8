"""Data stages: generate the demo world, write a split's manifest."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsss.classes import dataset_classes
from wsss.datasets import (BAD_FILE_PREFIX, DEFAULT_MAX_PIXELS, DatasetError, build_manifest, id_locations,
                           write_manifest)
from wsss.manifest_checks import FileCheck, check_files

log = logging.getLogger(__name__)


def generate_demo_world(out_dir: str | Path, world: Mapping[str, Any]) -> dict:
    """Generate the demo world into ``out_dir`` from the ``demo_world`` config section."""
    from wsss.demo.world import generate_demo_world as generate

    summary = generate(Path(out_dir), **dict(world))
    log.info("demo world written to %s: %s", out_dir, summary)
    return summary


def write_split_manifest(
    dataset: Mapping[str, Any],
    split: str,
    out_path: str | Path,
    on_unlabeled: str,
    expected_rows: int,
    on_bad_image: str = "fail",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 1,
) -> None:
    """Build, check and write one split's manifest.

    Every image and ground-truth file is decoded once here (``workers`` threads); rows whose files fail
    are rejected with file, line and id (``on_bad_image: fail``) or marked skipped (``skip``). A split
    left without a usable image is an error.
    """
    classes = dataset_classes(dataset)
    table = build_manifest(dataset, split, classes, on_unlabeled=on_unlabeled)
    if len(table) != expected_rows:
        raise DatasetError(
            f"split {split!r}: the manifest has {len(table)} rows but the workflow planned {expected_rows} "
            "(the split list changed after the DAG was built; rerun snakemake)"
        )
    if table.empty:
        raise DatasetError(f"split {split!r} lists no images")
    bad = check_files(table, FileCheck(num_classes=len(classes) + 1, max_pixels=max_pixels), workers)
    if bad:
        where = id_locations(dataset, split)
        lines = [f"{where.get(image_id, split)}: image {image_id!r}: {reason}" for image_id, reason in bad.items()]
        listing = "\n  ".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
        if on_bad_image == "fail":
            raise DatasetError(f"split {split!r}: {len(bad)} of {len(table)} images have unusable files "
                               f"(set dataset.on_bad_image: skip to skip them):\n  {listing}")
        log.warning("split %s: skipping %d images with unusable files:\n  %s", split, len(bad), listing)
        is_bad = table["image_id"].isin(list(bad))
        table.loc[is_bad, "skip_reason"] = [BAD_FILE_PREFIX + bad[i] for i in table.loc[is_bad, "image_id"]]
    if (table["skip_reason"] != "").all():
        raise DatasetError(f"split {split!r}: every one of its {len(table)} images is skipped "
                           f"(first: {table['image_id'].iloc[0]!r}: {table['skip_reason'].iloc[0]})")
    write_manifest(table, out_path)
    skipped = int((table["skip_reason"] != "").sum())
    log.info("split %s: %d images, %d skipped (%d with unusable files), %d with ground truth", split, len(table),
             skipped, len(bad), int((table["gt_path"] != "").sum()))
