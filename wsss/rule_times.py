"""Wall time and peak memory per rule of a finished run, summed over its jobs, from the `benchmark:` files.

Jobs are grouped by their benchmark folder with the split and shard left out, e.g.
`semples/benchmarks/cams` or `training/semples/refine`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["job_group", "rule_times"]


def job_group(run: Path, path: Path) -> str:
    """The rule-level name of one benchmark file: its path under the run without split, shard or key."""
    parts = path.relative_to(run).parts
    if parts[0] == "training":  # training/semples/<stage>/<key>/benchmark.tsv
        return "/".join(parts[:3])
    if "benchmarks" in parts:  # [<method>/]benchmarks/<rule>[/<split>/<shard>].tsv
        at = parts.index("benchmarks")
        rule = parts[at + 1].removesuffix(".tsv")
        return "/".join(parts[:at] + ("benchmarks", rule))
    return "/".join(parts[:-1])


def rule_times(run: Path) -> pd.DataFrame:
    """One row per group: jobs, summed and longest wall seconds, peak resident memory in MB."""
    rows = []
    for path in sorted(run.rglob("*.tsv")):
        if "benchmarks" not in path.parts and path.name != "benchmark.tsv":
            continue
        table = pd.read_csv(path, sep="\t")
        if "s" not in table.columns:
            continue
        rows.append({"group": job_group(run, path), "s": float(table["s"].iloc[-1]),
                     "max_rss": pd.to_numeric(table["max_rss"], errors="coerce").iloc[-1]})
    jobs = pd.DataFrame(rows)
    return (jobs.groupby("group")
            .agg(jobs=("s", "size"), sum_s=("s", "sum"), max_s=("s", "max"), peak_rss_mb=("max_rss", "max"))
            .round(1).sort_index())
