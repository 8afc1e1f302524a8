"""The results convention: every evaluation writes long-format rows through one function, and a summary joins them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

METRIC_COLUMNS = ["method", "stage", "split", "metric", "value"]


def _atomic_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        table.to_csv(tmp, index=False, float_format="%.6g")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_metrics(path: str | os.PathLike, rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Write metric rows ``method, stage, split, metric, value`` (extra keys are rejected) to a CSV."""
    table = pd.DataFrame(list(rows))
    unknown = set(table.columns) - set(METRIC_COLUMNS)
    missing = set(METRIC_COLUMNS) - set(table.columns)
    if unknown or missing:
        raise ValueError(f"metric rows need exactly {METRIC_COLUMNS}; unknown {sorted(unknown)}, missing {sorted(missing)}")
    table = table[METRIC_COLUMNS]
    _atomic_csv(table, path)
    return table


def write_per_class(
    path: str | os.PathLike,
    class_names: Sequence[str],
    columns: Mapping[str, np.ndarray],
) -> pd.DataFrame:
    """Write a per-class table: one row per class (background first), one column per scored variant."""
    table = pd.DataFrame({"class": list(class_names)})
    for name, values in columns.items():
        values = np.asarray(values, dtype=float)
        if len(values) != len(class_names):
            raise ValueError(f"per-class column {name!r} has {len(values)} values for {len(class_names)} classes")
        table[name] = values
    _atomic_csv(table, path)
    return table


def summarize(metric_files: Sequence[str | os.PathLike], csv_path: str | os.PathLike, md_path: str | os.PathLike) -> pd.DataFrame:
    """Concatenate metric CSVs into summary.csv and a Markdown table summary.md."""
    frames = [pd.read_csv(p) for p in metric_files]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    _atomic_csv(table, csv_path)
    lines = ["| method | stage | split | metric | value |", "|---|---|---|---|---|"]
    for row in table.itertuples(index=False):
        value = f"{row.value:.4f}" if isinstance(row.value, float) else str(row.value)
        lines.append(f"| {row.method} | {row.stage} | {row.split} | {row.metric} | {value} |")
    md_path = Path(md_path)
    tmp = md_path.with_name(f".{md_path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, md_path)
    return table
