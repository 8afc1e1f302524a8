"""Data stages: generate the demo world, write a split's manifest."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsss.classes import dataset_vocabulary
from wsss.datasets import DatasetError, build_manifest, write_manifest

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
) -> None:
    """Build and write one split's manifest, checking it has the row count the DAG was built with."""
    vocabulary = dataset_vocabulary(dataset)
    table = build_manifest(dataset, split, vocabulary.classes, on_unlabeled=on_unlabeled)
    if len(table) != expected_rows:
        raise DatasetError(
            f"split {split!r}: the manifest has {len(table)} rows but the workflow planned {expected_rows} "
            "(the split list changed after the DAG was built; rerun snakemake)"
        )
    write_manifest(table, out_path)
    skipped = int((table["skip_reason"] != "").sum())
    log.info("split %s: %d images, %d skipped, %d with ground truth", split, len(table), skipped,
             int((table["gt_path"] != "").sum()))
