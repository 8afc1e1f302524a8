"""Report stage: every instance's metric tables joined into one summary (CSV and Markdown)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from wsss.atomic import atomic_output
from wsss.datasets import read_manifest
from wsss.rule_times import rule_times
from wsss.tables import image_counts, skipped_list, summarize

log = logging.getLogger(__name__)


def write_summary(metric_files: Sequence[str | os.PathLike], manifest_files: Sequence[str | os.PathLike],
                  csv_path: str | os.PathLike, md_path: str | os.PathLike,
                  oracle_methods: Sequence[str] = (),
                  paper: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """Join the metric tables into summary.csv and summary.md (one row per method, stage and split).

    summary.md also compares with the ``paper``'s reported mIoU (method -> "stage/split" -> value), and
    ends with the images of each split, how many were skipped and why, and which.
    """
    manifests = {Path(path).stem: (Path(path), read_manifest(path)) for path in manifest_files}
    counts = {split: image_counts(table) for split, (_, table) in manifests.items()}
    # named by the manifest's path below the run folder, which holds both
    skipped = {split: skipped_list(table, f"{path.parent.name}/{path.name}") for split, (path, table) in manifests.items()}
    table = summarize(metric_files, csv_path, md_path, oracle_methods, split_images=counts, paper=paper,
                      skipped=skipped)
    log.info("summary of %d tables: %d methods, %d rows", len(metric_files), table["method"].nunique(), len(table))
    return table


def write_rule_times(run_dir: str | os.PathLike, out_path: str | os.PathLike) -> pd.DataFrame:
    """The run's wall time and peak memory per rule (from the benchmark files) as a CSV."""
    table = rule_times(Path(run_dir)).reset_index()
    with atomic_output(out_path) as tmp:
        table.to_csv(tmp, index=False)
    log.info("rule times of %d job groups", len(table))
    return table
