"""A method kind is added by its own files plus one registration line (docs/architecture.md, "Adding a method
kind"): a probe kind written that way, in a copy of the workflow, is validated by its own schema and checks, gets
its threads, memory and runtime from its own rule, and runs through the shared tail to the summary."""

from __future__ import annotations

import csv
import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_workflow_dag import _declared_threads
from tests.workflow_helpers import REPO, TINY

WORKFLOW_PATHS = ("Snakefile", "config.yaml", "rules", "workflow_scripts", "wsss", "profiles", "report", "envs")

PROBE_FILES = {
    "wsss/methods/probe/__init__.py": '''"""A probe kind: one centred Gaussian per labelled class."""

DEFAULTS = {
    "kind": "probe",
    "segmenter": False,
    "cam": {"sigma": 0.3},
    "pseudo_masks": {"crf": {"mode": "prob_unary", "iters": 2}, "confidence_threshold": None},
}
''',
    "wsss/methods/probe/checks.py": '''"""Parse-time checks of a probe instance."""


def check_instance(name, method, dataset_kind):
    """The Gaussian's width is a fraction of the image."""
    if method["cam"]["sigma"] > 1:
        raise ValueError(f"methods.{name}.cam.sigma must be at most 1")
''',
    "wsss/methods/probe/cams.py": '''"""The probe's CAMs: a centred Gaussian per labelled class, in the method contract."""

import numpy as np

from wsss import cam_shards
from wsss.datasets import read_manifest, usable_rows
from wsss.h5store import set_image_order, write_stage
from wsss.shards import shard_rows


def run_probe_cams(manifest_path, shard, shard_size, cam, out_path, locking):
    """One shard of centred Gaussians, max 1 per class."""
    table, skipped = usable_rows(shard_rows(read_manifest(manifest_path), shard, shard_size))
    with write_stage(out_path, cam_shards.STAGE, {"cam": dict(cam)}, inputs=[manifest_path], locking=locking,
                     skipped=skipped) as out:
        for row in table.itertuples(index=False):
            keys = np.sort(np.asarray(row.labels, dtype=np.int64))
            rows, cols = np.mgrid[0:row.height, 0:row.width]
            distance = ((rows / row.height - 0.5) ** 2 + (cols / row.width - 0.5) ** 2) / cam["sigma"] ** 2
            maps = np.repeat(np.exp(-distance)[None], len(keys), axis=0).astype(np.float32)
            cam_shards.put_cams(out, row.image_id, keys, {"cam": maps}, (int(row.height), int(row.width)))
        set_image_order(out, list(table["image_id"]))
''',
    "workflow_scripts/probe_cams.py": '''"""Rule probe_cams."""

from wsss.methods.probe.cams import run_probe_cams

run_probe_cams(snakemake.input.manifest, snakemake.wildcards.shard, snakemake.params.shard_size,
               snakemake.params.cam, snakemake.output[0], snakemake.params.hdf5["locking"])
''',
    "rules/methods/probe.smk": '''# Method kind probe: a centred Gaussian per labelled class.


rule probe_cams:
    input:
        manifest=f"{OUT}/manifests/{{split}}.tsv",
    output:
        f"{OUT}/{{method}}/cams/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/{{method}}/logs/cams/{{split}}/{{shard}}.log",
    wildcard_constraints:
        method=one_of(instances_of(METHODS, "probe")),
    threads: threads_of("probe_cams", 4)
    resources:
        mem_mb=res("probe_cams", "mem_mb", 1000),
        runtime=res("probe_cams", "runtime", 10),
    params:
        cam=method_settings("cam"),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_digest("probe_cams.py"),
    script:
        "../../workflow_scripts/probe_cams.py"
''',
    "rules/schemas/methods/probe.schema.yaml": '''$schema: "https://json-schema.org/draft/2020-12/schema"
description: a probe instance
type: object
additionalProperties: false
properties:
  kind: {const: probe}
  segmenter: true
  pseudo_masks: true
  cam:
    type: object
    additionalProperties: false
    properties:
      sigma: {type: number, exclusiveMinimum: 0}
''',
}


def _workflow_with_probe_kind(root: Path) -> Path:
    """A copy of the workflow with the probe kind's files and its registration line, nothing else changed."""
    root.mkdir()
    for name in WORKFLOW_PATHS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, root / name)
    for path, text in PROBE_FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    registry = root / "wsss" / "method_kinds.py"
    text = registry.read_text()
    line = 'KINDS: tuple[str, ...] = ("clip_es", "semples", "excel")'
    assert line in text
    registry.write_text(text.replace(line, line.replace('"excel")', '"excel", "probe")')))
    return root


def _changed_files(root: Path) -> list[str]:
    """Files of the copy that differ from the checkout's (new files included)."""
    changed = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and "__pycache__" not in relative.parts:
            original = REPO / relative
            if not original.is_file() or not filecmp.cmp(path, original, shallow=False):
                changed.append(str(relative))
    return changed


def _snakemake(workflow: Path, workdir: Path, config: dict, *args: str, check: bool = True):
    workdir.mkdir(exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    profile = workflow / "profiles" / "cpu"
    command = [sys.executable, "-m", "snakemake", "-s", str(workflow / "Snakefile"), "--directory", str(workdir),
               "--workflow-profile", str(profile), "--cores", "2",
               "--configfile", str(profile / "threads.yaml"), str(workdir / "config.yaml"), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def test_a_kind_needs_only_its_own_files_and_one_registration_line(tmp_path):
    workflow = _workflow_with_probe_kind(tmp_path / "workflow")
    assert _changed_files(workflow) == sorted(["wsss/method_kinds.py", *PROBE_FILES])
    config = yaml.safe_load(TINY.read_text())
    config["methods"] = {"probe": {"kind": "probe"}}

    # its own schema and its own checks stop a bad instance while parsing, naming the key
    for instance, message in (({"kind": "probe", "cam": {"width": 1}}, "methods.probe.cam: Additional properties"),
                              ({"kind": "probe", "cam": {"sigma": 2}}, "methods.probe.cam.sigma must be at most 1")):
        failed = _snakemake(workflow, tmp_path / "bad", {**config, "methods": {"probe": instance}}, "-n", check=False)
        assert failed.returncode != 0 and message in failed.stderr + failed.stdout, failed.stderr[-2000:]
    failed = _snakemake(workflow, tmp_path / "bad", {**config, "resources": {"probe_camz": {"mem_mb": 10}}}, "-n",
                        check=False)
    assert "resources.probe_camz: no rule of this workflow is named 'probe_camz'" in failed.stderr + failed.stdout

    # the CPU profile gives its jobs one thread; config resources.<rule> reaches its rule
    planned = _snakemake(workflow, tmp_path / "run", {**config, "resources": {"probe_cams": {"mem_mb": 123}}}, "-n")
    assert _declared_threads(planned)["probe_cams"] == {1}
    assert "mem_mb=123" in planned.stdout + planned.stderr

    # and it runs through the shared tail: CRF pseudo masks scored beside the ground truth, in the summary
    _snakemake(workflow, tmp_path / "run", config)
    with open(tmp_path / "run" / "results" / config["run"] / "tables" / "summary.csv") as handle:
        scores = {row["stage"]: float(row["value"]) for row in csv.DictReader(handle)
                  if row["method"] == "probe" and row["metric"] == "miou"}
    assert "crf" in scores and len(scores) >= 2, scores
    assert all(0 < value < 1 for value in scores.values()), scores
