"""The results convention: every evaluation writes long-format rows through one function, and a summary joins them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from wsss.atomic import atomic_output, write_text_atomic
from wsss.datasets import BAD_FILE_PREFIX

METRIC_COLUMNS = ["method", "stage", "split", "metric", "value"]


def _atomic_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a table as CSV (floats to 6 significant digits) atomically."""
    with atomic_output(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


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


def image_counts(manifest: pd.DataFrame) -> dict[str, int]:
    """A split's images: all, used, and skipped for having no labels or for bad files (from its manifest)."""
    reasons = manifest["skip_reason"]
    bad = int(reasons.str.startswith(BAD_FILE_PREFIX).sum())
    return {"images": len(manifest), "used": int((reasons == "").sum()),
            "skipped: no labels": int((reasons != "").sum()) - bad, "skipped: bad files": bad}


def skipped_list(manifest: pd.DataFrame, source: str, limit: int = 10) -> str:
    """One line naming a split's skipped images and why (the first ``limit``, then where the rest are); '' if none."""
    skipped = manifest[manifest["skip_reason"] != ""]
    if skipped.empty:
        return ""
    named = ", ".join(f"`{i}` ({reason})" for i, reason in zip(skipped["image_id"][:limit], skipped["skip_reason"]))
    rest = f", and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"{named}{rest} (all of them: {source}, column skip_reason)"


def summarize(metric_files: Sequence[str | os.PathLike], csv_path: str | os.PathLike, md_path: str | os.PathLike,
              oracle_methods: Sequence[str] = (), split_images: Mapping[str, Mapping[str, int]] | None = None,
              paper: Mapping[str, Mapping[str, float]] | None = None,
              skipped: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Concatenate metric CSVs into summary.csv, and summary.md: mIoU with the methods side by side, then every row.

    Rows of ``oracle_methods`` (settings chosen on ground truth) get ``oracle`` true, and their method name
    a trailing " (oracle)" in the Markdown. ``paper`` (method -> "stage/split" -> reported mIoU) adds a table of
    this run's mIoU beside the reported one; ``split_images`` (split -> :func:`image_counts`) one of the images
    each split had and skipped, and ``skipped`` (split -> :func:`skipped_list`) which images those were.
    """
    frames = [pd.read_csv(p) for p in metric_files]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    table["oracle"] = table["method"].isin(list(oracle_methods))
    _atomic_csv(table, csv_path)
    table = table.assign(method=[f"{m} (oracle)" if o else m for m, o in zip(table["method"], table["oracle"])])
    lines = ["| method | stage | split | " + " | ".join(_metric_order(table)) + " |",
             "|---|---|---|" + "---|" * len(_metric_order(table))]
    for (method, stage, split), group in table.groupby(["method", "stage", "split"], sort=False):
        values = dict(zip(group["metric"], group["value"]))
        cells = [_format(values.get(metric)) for metric in _metric_order(table)]
        lines.append(f"| {method} | {stage} | {split} | " + " | ".join(cells) + " |")
    side_by_side = miou_by_method(table)
    text = side_by_side + "\n\nAll metrics:\n\n" + "\n".join(lines) + "\n"
    if paper:
        text += "\n" + against_paper(table, paper) + "\n"
    if split_images:
        columns = list(next(iter(split_images.values())))
        text += ("\nImages per split:\n\n| split | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
                 + "".join(f"| {split} | " + " | ".join(str(counts[c]) for c in columns) + " |\n"
                           for split, counts in split_images.items()))
    for split, named in (skipped or {}).items():
        if named:
            text += f"\nSkipped in {split}: {named}\n"
    write_text_atomic(md_path, text)
    return table


def against_paper(table: pd.DataFrame, paper: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table of this run's mIoU beside the reported one, per method and "stage/split", and the difference."""
    miou = {(row.method.removesuffix(" (oracle)"), f"{row.stage}/{row.split}"): row.value
            for row in table[table["metric"] == "miou"].itertuples(index=False)}
    lines = ["Against the papers (mIoU):", "", "| method | stage/split | this run | paper | difference |",
             "|---|---|---|---|---|"]
    for method, reported in paper.items():
        for key, value in reported.items():
            ours = miou.get((method, key))
            difference = "–" if ours is None else f"{ours - value:+.4f}"
            lines.append(f"| {method} | {key} | {_format(ours)} | {value:.4f} | {difference} |")
    return "\n".join(lines)


def miou_by_method(table: pd.DataFrame) -> str:
    """A Markdown table of mIoU: one row per (stage, split), one column per method ('–' where a method has none)."""
    miou = table[table["metric"] == "miou"]
    methods = list(dict.fromkeys(miou["method"]))
    values = {(row.stage, row.split, row.method): row.value for row in miou.itertuples(index=False)}
    lines = ["mIoU by method:", "", "| stage | split | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for stage, split in dict.fromkeys(zip(miou["stage"], miou["split"])):
        cells = [_format(values.get((stage, split, method))) for method in methods]
        lines.append(f"| {stage} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metric_order(table: pd.DataFrame) -> list[str]:
    """Metric names in order of first appearance (mIoU first, as every evaluation writes it first)."""
    return list(dict.fromkeys(table["metric"]))


def _format(value: object) -> str:
    """A metric cell: four decimals for numbers, a dash where the stage has no such metric."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
