"""Run the workflow in a scratch directory the way a user would (the CLI), for the workflow tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

from wsss.method_kinds import merged

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


def snakemake(workdir: Path, *args: str, config: Path = TINY, check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's Snakefile inside ``workdir`` with an explicit config file."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config), "--workflow-profile", "none", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def datasets_of(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a stage file, keyed by its HDF5 path."""
    found = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """The per-rule job counts from a dry run's 'Job stats' table (empty when nothing is to be done)."""
    text = result.stdout + result.stderr
    counts: dict[str, int] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^([A-Za-z_]\w*)\s+(\d+)\s*$", line.strip())
            if match and match.group(1) != "total":
                counts[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


def planned_methods(result: subprocess.CompletedProcess) -> dict[str, set[str]]:
    """Per rule, the method instances of the jobs a dry run plans (from the jobs' ``wildcards:`` lines)."""
    planned: dict[str, set[str]] = {}
    rule = None
    for line in (result.stdout + result.stderr).splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if match:
            rule = match.group(1)
            planned.setdefault(rule, set())
            continue
        match = re.search(r"wildcards:.*\bmethod=(\w+)", line)
        if match and rule is not None:
            planned[rule].add(match.group(1))
    return planned


def write_config(path: Path, base: Path = TINY, **changes) -> Path:
    """Write a copy of a config with some sections updated (mappings merged key by key, other values replaced)."""
    config = merged(yaml.safe_load(base.read_text()), changes)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
