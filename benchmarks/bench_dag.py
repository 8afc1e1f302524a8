"""DAG construction and no-op dry-run time for VOC-sized and COCO-sized synthetic datasets.

Builds a synthetic dataset whose split lists have the real sizes (no images are needed to plan the
DAG), then times `snakemake -n` (a) with nothing built and (b) with every output present (the no-op
dry run a user sees after a finished run). Prints a Markdown table.

    .venv/bin/python benchmarks/bench_dag.py [--repeats 3] [--workdir /tmp/wsss-bench-dag]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SIZES = {  # split -> number of ids, as in the CLIP-ES split lists
    "voc": {"train": 1464, "train_aug": 10582, "val": 1449},
    "coco": {"train": 82081, "val": 40137},
}


def synthetic_config(kind: str, root: Path) -> dict:
    """A preset config pointing at a dataset made only of split lists."""
    config = yaml.safe_load((REPO / "configs" / f"{kind}.yaml").read_text())
    weights = root / "ViT-B-16.pt"
    weights.write_bytes(b"")
    config["clip"]["pretrained"] = str(weights)
    config["run"] = f"bench-{kind}"
    if kind == "voc":
        config["dataset"]["root"] = str(root)
        config["dataset"]["split_lists"] = {"train_aug": str(root / "train_aug.txt")}
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        for split, n in SIZES["voc"].items():
            target = root / "train_aug.txt" if split == "train_aug" else sets / f"{split}.txt"
            # train is a subset of train_aug, as in the real lists
            offset = 0 if split in ("train", "train_aug") else 100_000
            target.write_text("".join(f"2007_{offset + i:06d}\n" for i in range(n)))
    else:
        lists = {}
        for split, n in SIZES["coco"].items():
            path = root / f"{split}.txt"
            path.write_text("".join(f"COCO_{split}2014_{i:012d} 0\n" for i in range(n)))
            lists[split] = str(path)
            config["dataset"]["splits"][split] = {"images": str(root), "annotations": str(root / "x.json")}
        config["dataset"]["split_lists"] = lists
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return config


def snakemake(workdir: Path, config: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Run the CLI and return (wall seconds, result)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config), "--workflow-profile", "none", *args]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed, result


def materialise_outputs(workdir: Path, config: Path) -> int:
    """Create every planned output (files empty, directory outputs as folders), then let snakemake touch them in order."""
    _, result = snakemake(workdir, config, "--summary")
    count = 0
    for line in result.stdout.splitlines()[1:]:
        output = line.split("\t")[0]
        if not output or output.startswith("Building"):
            continue
        path = workdir / output
        path.parent.mkdir(parents=True, exist_ok=True)
        if output.endswith(("SegmentationClassPseudo", "demo_world")):
            path.mkdir(exist_ok=True)
        else:
            path.touch()
        count += 1
    snakemake(workdir, config, "--touch", "--cores", "1")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/wsss-bench-dag"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    rows = []
    for kind in ("voc", "coco"):
        root = args.workdir / kind
        root.mkdir(parents=True)
        config = synthetic_config(kind, root)
        config_path = root / "config.yaml"
        planned = [snakemake(root, config_path, "-n")[0] for _ in range(args.repeats)]
        _, plan = snakemake(root, config_path, "-n")
        n_jobs = next((int(l.split()[1]) for l in plan.stdout.splitlines() if l.startswith("total")), 0)
        n_outputs = materialise_outputs(root, config_path)
        noop = []
        for _ in range(args.repeats):
            seconds, result = snakemake(root, config_path, "-n")
            if "Nothing to be done" not in result.stdout + result.stderr:
                raise RuntimeError(f"{kind}: the dry run after touching every output still plans jobs")
            noop.append(seconds)
        images = SIZES[kind][config["splits"]["pseudo"]]
        rows.append({"dataset": kind, "pseudo-split images": images, "shard_size": config["shard_size"],
                     "jobs": n_jobs, "outputs": n_outputs, "dry run, nothing built (s)": statistics.median(planned),
                     "no-op dry run (s)": statistics.median(noop)})
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"median of {args.repeats}")
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
