"""The results convention: every evaluation writes long-format rows through one function, and a summary joins them."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from html import escape

import numpy as np
import pandas as pd

from wsss.atomic import atomic_output, write_text_atomic
from wsss.datasets import BAD_FILE_PREFIX

METRIC_COLUMNS = ["method", "stage", "split", "metric", "value"]
# The evaluated stages with a per-class table (<method>/tables/<stage>_per_class.csv), in stage order, and the
# words the report uses for them.
STAGE_TITLES = {"cams": "CAMs", "pseudo_masks": "pseudo masks", "segmenter": "segmenter"}


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


def stage_order(stage: str) -> tuple[int, str]:
    """Sort key of a stage name, the one order of every table and figure: initial CAMs, CAMs, pseudo masks,
    segmenter, segmenter with its test-time CRF (then by name)."""
    if stage.startswith("cam_initial"):
        rank = 0
    elif stage.startswith("cam"):
        rank = 1
    elif stage.startswith("segmenter_crf"):
        rank = 4
    elif stage.startswith("segmenter"):
        rank = 3
    else:  # a pseudo-mask refiner: crf
        rank = 2
    return rank, stage


@dataclass(frozen=True)
class Section:
    """One titled table of the summary (cells already formatted), with an optional line of notes after it."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def summarize(metric_files: Sequence[str | os.PathLike], csv_path: str | os.PathLike, md_path: str | os.PathLike,
              oracle_methods: Sequence[str] = (), split_images: Mapping[str, Mapping[str, int]] | None = None,
              paper: Mapping[str, Mapping[str, float]] | None = None,
              skipped: Mapping[str, str] | None = None, html_path: str | os.PathLike | None = None,
              wide_csv_path: str | os.PathLike | None = None, title: str = "Summary") -> pd.DataFrame:
    """Concatenate metric CSVs into summary.csv, and summary.md: mIoU with the methods side by side, then every row.

    Rows follow the method files' order, then :func:`stage_order`, then split. Rows of ``oracle_methods``
    (settings chosen on ground truth) get ``oracle`` true, and their method name a trailing " (oracle)" in the
    Markdown. ``paper`` (method -> "stage/split" -> reported mIoU) adds a table of this run's mIoU beside the
    reported one; ``split_images`` (split -> :func:`image_counts`) one of the images each split had and skipped,
    and ``skipped`` (split -> :func:`skipped_list`) which images those were. ``html_path`` writes the same
    tables as a standalone HTML page, ``wide_csv_path`` the side-by-side mIoU table as CSV.
    """
    frames = [pd.read_csv(p) for p in metric_files]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    table = _in_stage_order(table)
    table["oracle"] = table["method"].isin(list(oracle_methods))
    _atomic_csv(table, csv_path)
    table = table.assign(method=[f"{m} (oracle)" if o else m for m, o in zip(table["method"], table["oracle"])])
    sections = summary_sections(table, paper, split_images, skipped)
    write_text_atomic(md_path, "\n\n".join(markdown_section(section) for section in sections) + "\n")
    if html_path is not None:
        write_text_atomic(html_path, html_page(title, sections))
    if wide_csv_path is not None:
        side_by_side = sections[0]
        _atomic_csv(pd.DataFrame(side_by_side.rows, columns=side_by_side.header), wide_csv_path)
    return table


def _in_stage_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by method (first appearance), then in :func:`stage_order`, then by split; metrics keep their order."""
    methods = {method: rank for rank, method in enumerate(dict.fromkeys(table["method"]))}
    keys = [(methods[row.method], stage_order(row.stage), row.split) for row in table.itertuples(index=False)]
    order = sorted(range(len(table)), key=lambda i: (keys[i], i))
    return table.iloc[order].reset_index(drop=True)


def summary_sections(table: pd.DataFrame, paper: Mapping[str, Mapping[str, float]] | None = None,
                     split_images: Mapping[str, Mapping[str, int]] | None = None,
                     skipped: Mapping[str, str] | None = None) -> list[Section]:
    """The summary's tables: mIoU by method, all metrics, against the papers, images per split."""
    metrics = _metric_order(table)
    rows = []
    for (method, stage, split), group in table.groupby(["method", "stage", "split"], sort=False):
        values = dict(zip(group["metric"], group["value"]))
        rows.append([method, stage, split, *(_format(values.get(metric)) for metric in metrics)])
    sections = [miou_by_method(table), Section("All metrics", ["method", "stage", "split", *metrics], rows)]
    if paper:
        sections.append(against_paper(table, paper))
    if split_images:
        columns = list(next(iter(split_images.values())))
        notes = [f"Skipped in {split}: {named}" for split, named in (skipped or {}).items() if named]
        sections.append(Section("Images per split", ["split", *columns],
                                [[split, *(str(counts[c]) for c in columns)] for split, counts in split_images.items()],
                                notes))
    elif skipped:
        sections[-1] = replace(sections[-1], notes=[f"Skipped in {s}: {named}" for s, named in skipped.items() if named])
    return sections


def against_paper(table: pd.DataFrame, paper: Mapping[str, Mapping[str, float]]) -> Section:
    """This run's mIoU beside the reported one, per method and "stage/split", and the difference."""
    miou = {(row.method.removesuffix(" (oracle)"), f"{row.stage}/{row.split}"): row.value
            for row in table[table["metric"] == "miou"].itertuples(index=False)}
    rows = []
    for method, reported in paper.items():
        for key, value in reported.items():
            ours = miou.get((method, key))
            if value is None:  # the paper's number is not known
                rows.append([method, key, _format(ours), "unknown", "–"])
                continue
            difference = "–" if ours is None else f"{ours - value:+.4f}"
            rows.append([method, key, _format(ours), f"{value:.4f}", difference])
    return Section("Against the papers (mIoU)", ["method", "stage/split", "this run", "paper", "difference"], rows)


def miou_by_method(table: pd.DataFrame) -> Section:
    """mIoU: one row per (stage, split) in :func:`stage_order`, one column per method ('–' where a method has none)."""
    miou = table[table["metric"] == "miou"]
    methods = list(dict.fromkeys(miou["method"]))
    values = {(row.stage, row.split, row.method): row.value for row in miou.itertuples(index=False)}
    stages = sorted(dict.fromkeys(zip(miou["stage"], miou["split"])), key=lambda key: (stage_order(key[0]), key[1]))
    rows = [[stage, split, *(_format(values.get((stage, split, method))) for method in methods)]
            for stage, split in stages]
    return Section("mIoU by method", ["stage", "split", *methods], rows)


def markdown_section(section: Section) -> str:
    """A section as Markdown: its title line, the table, then each note on a line of its own."""
    lines = [f"{section.title}:", "", "| " + " | ".join(section.header) + " |", "|" + "---|" * len(section.header)]
    lines += ["| " + " | ".join(row) + " |" for row in section.rows]
    lines += [f"\n{note}" for note in section.notes]
    return "\n".join(lines)


def html_page(title: str, sections: Sequence[Section]) -> str:
    """The sections as one standalone HTML page (inline style, no scripts), readable inside the report."""
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>",
             f"<style>{_HTML_STYLE}</style></head><body>", f"<h1>{escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{escape(section.title)}</h2>\n<table>")
        parts.append("<tr>" + "".join(f"<th>{escape(cell)}</th>" for cell in section.header) + "</tr>")
        for row in section.rows:
            parts.append("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>")
        parts.append("</table>")
        parts += [f"<p>{_inline_code(note)}</p>" for note in section.notes]
    parts.append("</body></html>\n")
    return "\n".join(parts)


_HTML_STYLE = ("body{font-family:sans-serif;font-size:14px;margin:1em}table{border-collapse:collapse;margin-bottom:1em}"
               "th,td{border:1px solid #bbb;padding:2px 8px}td{text-align:right;font-variant-numeric:tabular-nums}"
               "th{background:#eee}td:first-child,td:nth-child(2){text-align:left}")


def _inline_code(text: str) -> str:
    """Escape a Markdown note for HTML, turning its `code` spans into <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(text))


def _metric_order(table: pd.DataFrame) -> list[str]:
    """Metric names in order of first appearance (mIoU first, as every evaluation writes it first)."""
    return list(dict.fromkeys(table["metric"]))


def _format(value: object) -> str:
    """A metric cell: four decimals for numbers, a dash where the stage has no such metric."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
