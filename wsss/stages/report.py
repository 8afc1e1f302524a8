"""Report stage: every instance's metric tables joined into one summary (CSV, Markdown, HTML), the rule times,
and the workflow's rule graph."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from wsss.atomic import atomic_output
from wsss.figures import rule_graph_figure
from wsss.rule_graph import layered_layout, parse_rulegraph, transitive_reduction
from wsss.datasets import read_manifest
from wsss.rule_times import rule_times
from wsss.tables import image_counts, skipped_list, summarize

log = logging.getLogger(__name__)


def write_summary(metric_files: Sequence[str | os.PathLike], manifest_files: Sequence[str | os.PathLike],
                  csv_path: str | os.PathLike, md_path: str | os.PathLike,
                  oracle_methods: Sequence[str] = (),
                  paper: Mapping[str, Mapping[str, float]] | None = None,
                  html_path: str | os.PathLike | None = None,
                  wide_csv_path: str | os.PathLike | None = None, run: str = "") -> pd.DataFrame:
    """Join the metric tables into summary.csv and summary.md (one row per method, stage and split), the same
    tables as a page (``html_path``) and the side-by-side mIoU table as CSV (``wide_csv_path``).

    summary.md also compares with the ``paper``'s reported mIoU (method -> "stage/split" -> value), and
    ends with the images of each split, how many were skipped and why, and which.
    """
    manifests = {Path(path).stem: (Path(path), read_manifest(path)) for path in manifest_files}
    counts = {split: image_counts(table) for split, (_, table) in manifests.items()}
    # named by the manifest's path below the run folder, which holds both
    skipped = {split: skipped_list(table, f"{path.parent.name}/{path.name}") for split, (path, table) in manifests.items()}
    table = summarize(metric_files, csv_path, md_path, oracle_methods, split_images=counts, paper=paper,
                      skipped=skipped, html_path=html_path, wide_csv_path=wide_csv_path,
                      title=f"Summary of run {run}" if run else "Summary")
    log.info("summary of %d tables: %d methods, %d rows", len(metric_files), table["method"].nunique(), len(table))
    return table


def write_rule_times(run_dir: str | os.PathLike, out_path: str | os.PathLike) -> pd.DataFrame:
    """The run's wall time and peak memory per rule (from the benchmark files) as a CSV."""
    table = rule_times(Path(run_dir)).reset_index()
    with atomic_output(out_path) as tmp:
        table.to_csv(tmp, index=False)
    log.info("rule times of %d job groups", len(table))
    return table


def rulegraph_dot(snakefile: str | os.PathLike, config: Mapping, workdir: str | os.PathLike) -> str:
    """``snakemake --rulegraph`` of the workflow with this (complete, resolved) config, run in ``workdir``.

    It only builds the DAG: no lock is taken, so it may run while the run it describes is in progress.
    """
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(config))
        environment = {key: value for key, value in os.environ.items() if key != "SNAKEMAKE_PROFILE"}
        result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--configfile",
                                 str(config_path), "--rulegraph", "--nolock", "--workflow-profile", "none", "--quiet"],
                                cwd=workdir, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake --rulegraph of {snakefile} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def write_rule_graph(dot: str, out_path: str | os.PathLike) -> None:
    """The rule graph (one node per rule, implied edges left out) as a figure."""
    names, edges = parse_rulegraph(dot)
    reduced = transitive_reduction(edges)
    rule_graph_figure(layered_layout(names, reduced), reduced, out_path,
                      f"Rule graph: {len(names)} rules (edges that longer paths imply left out)")
    log.info("rule graph: %d rules, %d of %d edges drawn", len(names), len(reduced), len(edges))
