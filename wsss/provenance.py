"""A run's provenance manifest (``<run>/manifest.json``) and ``wsss-verify``, which rechecks it.

The manifest records what made the run's numbers: package versions, the workflow's git commit (and
whether the checkout had uncommitted changes), the resolved config and its digest, the digests of the
weight files the config names, of the dataset manifests, and of every output file. ``wsss-verify``
recomputes every digest and names each file that is missing or differs.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from wsss import __version__
from wsss.atomic import write_text_atomic
from wsss.digests import file_digest, params_digest

__all__ = ["MANIFEST_NAME", "package_versions", "git_state", "output_files", "build_manifest", "write_run_manifest",
           "verify", "main"]

MANIFEST_NAME = "manifest.json"
FORMAT = "wsss-run-manifest/1"
# Records of how a run ran, not results: not digested (folders, and files by name or suffix).
_NOT_OUTPUTS = {"logs", "benchmarks", "checkpoints"}
_NOT_OUTPUT_FILES = {"benchmark.tsv", "checkpoint.pt"}
# `snakemake --report` (make report) writes the run's report after the manifest, from the finished run
_REPORT_NAMES = {"report.html", "report.zip"}
_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "open_clip": "open_clip_torch", "snakemake": "snakemake",
             "pydensecrf": "pydensecrf2", "numpy": "numpy", "h5py": "h5py", "pillow": "pillow",
             "opencv": "opencv-python-headless"}


def package_versions() -> dict[str, str | None]:
    """Versions of python, wsss and the packages that shape the numbers, and torch's CUDA (None: CPU build)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "wsss": __version__}
    for name, distribution in _PACKAGES.items():
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import torch  # local import: verify does not need torch

    versions["torch"] = torch.__version__  # with its build tag (e.g. +cu130, +cpu)
    versions["cuda"] = torch.version.cuda
    return versions


def git_state(folder: str | Path) -> dict[str, Any]:
    """The commit of the checkout holding ``folder`` and whether it has uncommitted changes (None: not git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def output_files(run_dir: str | Path) -> list[Path]:
    """Every result file of a run, sorted: all files below it except logs, benchmarks, checkpoints,
    hidden files (temporaries), the manifest itself, the report built from the finished run, and
    symbolic links (the exports' ``JPEGImages`` links point at the dataset's images, which are inputs)."""
    run_dir = Path(run_dir)
    found = []
    for path in run_dir.rglob("*"):
        relative = path.relative_to(run_dir)
        parts = relative.parts
        if path.is_symlink() or path.is_dir() or len(parts) == 1 and (path.name == MANIFEST_NAME
                                                                      or path.name in _REPORT_NAMES):
            continue
        if any((run_dir / parent).is_symlink() for parent in relative.parents[:-1]):
            continue  # found through a linked folder
        if any(part in _NOT_OUTPUTS or part.startswith(".") for part in parts):
            continue
        if path.name in _NOT_OUTPUT_FILES or path.suffix == ".log":
            continue
        found.append(path)
    return sorted(found)


def _digests(paths: Iterable[Path], relative_to: Path) -> dict[str, str]:
    return {str(path.relative_to(relative_to)): file_digest(path) for path in paths}


def build_manifest(run_dir: str | Path, config: Mapping[str, Any], weights: Mapping[str, str | None],
                   dataset_manifests: Iterable[str | Path], workflow_dir: str | Path) -> dict[str, Any]:
    """The manifest of a finished run as a dict (see the module docstring)."""
    run_dir = Path(run_dir)
    return {
        "format": FORMAT,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git": git_state(workflow_dir),
        "config_digest": params_digest(dict(config)),
        "config": dict(config),
        # config key -> the local file it names and its digest (open_clip tags and unset keys: no file)
        "weights": {key: {"path": str(path), "sha256": file_digest(path)} for key, path in sorted(weights.items())
                    if path and Path(path).is_file()},
        "dataset_manifests": _digests(sorted(Path(p) for p in dataset_manifests), run_dir),
        "outputs": _digests(output_files(run_dir), run_dir),
    }


def write_run_manifest(run_dir: str | Path, config: Mapping[str, Any], weights: Mapping[str, str | None],
                       dataset_manifests: Iterable[str | Path], workflow_dir: str | Path,
                       out_path: str | Path) -> dict[str, Any]:
    """Build the manifest and write it as indented JSON (atomically)."""
    manifest = build_manifest(run_dir, config, weights, dataset_manifests, workflow_dir)
    write_text_atomic(out_path, json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n")
    return manifest


def verify(manifest_path: str | Path) -> list[str]:
    """Recompute every digest a run manifest records; one line per file that is missing or differs."""
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: not a wsss run manifest (format {manifest.get('format')!r})")
    run_dir = manifest_path.parent
    problems = []
    for section in ("dataset_manifests", "outputs"):
        for relative, expected in manifest[section].items():
            path = run_dir / relative
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif file_digest(path) != expected:
                problems.append(f"{path}: differs from the manifest (sha256 {expected[:12]}...)")
    for key, entry in manifest["weights"].items():
        path = Path(entry["path"])
        if not path.is_file():
            problems.append(f"{path} ({key}): missing")
        elif file_digest(path) != entry["sha256"]:
            problems.append(f"{path} ({key}): differs from the manifest")
    recorded = set(manifest["outputs"])
    extra = [str(p.relative_to(run_dir)) for p in output_files(run_dir)]
    problems += [f"{run_dir / name}: not in the manifest (written after it)" for name in extra if name not in recorded]
    return problems


def dangling_links(run_dir: str | Path) -> list[Path]:
    """Symbolic links below a run folder whose target is not there (the exports' image links of a copied run)."""
    return sorted(path for path in Path(run_dir).rglob("*") if path.is_symlink() and not path.exists())


def main(argv: list[str] | None = None) -> int:
    """``wsss-verify results/<run>/manifest.json``: exit 0 when every file matches, 1 naming each that does not."""
    parser = argparse.ArgumentParser(prog="wsss-verify", description=main.__doc__)
    parser.add_argument("manifest", help="a run's manifest.json")
    args = parser.parse_args(argv)
    try:
        problems = verify(args.manifest)
    except (OSError, ValueError, KeyError) as error:
        print(f"wsss-verify: {error}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    if not problems:
        manifest = json.loads(Path(args.manifest).read_text())
        print(f"{args.manifest}: all {len(manifest['outputs'])} outputs, {len(manifest['dataset_manifests'])} "
              f"dataset manifests and {len(manifest['weights'])} weight files match")
    dangling = dangling_links(Path(args.manifest).parent)
    if dangling:
        # not a failure: the links are conveniences pointing at the dataset, which a copied run leaves behind
        print(f"note: {len(dangling)} image link(s) do not resolve here (e.g. {dangling[0]}): the exports' JPEGImages "
              "point at the dataset's images relative to the results tree; link them again where the dataset is")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
