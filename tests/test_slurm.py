"""The workflow on a real single-node SLURM cluster with a fake GPU (started by .ci/slurm/start-cluster.sh).

Checks that the run completes through `--executor slurm` with the repository's SLURM profile, that
GPU rules were submitted with a GPU request and CPU rules without one (read from SLURM's own job
records), and that the outputs equal those of a local `--cores` run of the same configuration: the
HDF5 stages array by array, the exported PNGs and the metric tables byte by byte (two runs from
nothing on CPU are deterministic).
Where SLURM cannot be started (not root, no packages) the test skips loudly; in CI it fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.workflow_helpers import REPO, TINY, datasets_of, snakemake

pytestmark = pytest.mark.slurm

# the tiny config's clip_es keeps its affinity (clip_es_gradcam_keep_affinity); clip_es_logit does not
GPU_RULES = {"train_demo_clip", "text_features", "clip_es_gradcam", "clip_es_gradcam_keep_affinity",
             "train_segmenter", "predict", "semples_phase1", "semples_match", "semples_prompts", "semples_refine",
             "semples_cams", "excel_attribute_bank", "excel_cams"}
CPU_RULES = {"generate_demo_world", "manifest", "clip_es_caa", "crf", "par", "evaluate_cams", "export_pseudo_masks",
             "export_predictions", "evaluate_pseudo_masks", "evaluate_segmenter", "figures", "training_figure"}
COMPARED_STAGES = ("clip_es/gradcam", "clip_es/cams", "clip_es/crf", "clip_es/predictions", "clip_es_logit/cams",
                   "semples/cams", "semples/crf")


def _cannot_start() -> str | None:
    """Why a SLURM cluster cannot be started on this machine, or None."""
    if os.geteuid() != 0:
        return "the cluster scripts need root"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "neither SLURM nor apt-get is available"
    return None


def _skip_or_fail(reason: str, capsys) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"SLURM integration test cannot run in CI: {reason}")
    with capsys.disabled():
        print(f"\n*** SKIPPING the SLURM integration test: {reason} ***", file=sys.stderr)
    pytest.skip(f"SLURM cannot be started here: {reason}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running single-node cluster; shut down at the end, pass or fail."""
    reason = _cannot_start()
    state = tmp_path_factory.mktemp("slurm_state")
    started = None
    if reason is None:
        started = subprocess.run(["bash", str(REPO / ".ci/slurm/start-cluster.sh"), str(state)],
                                 capture_output=True, text=True, timeout=600)
        if started.returncode != 0:
            reason = f"start-cluster.sh failed:\n{started.stderr[-3000:]}"
    yield reason
    if started is not None:
        subprocess.run(["bash", str(REPO / ".ci/slurm/stop-cluster.sh"), str(state)], capture_output=True,
                       timeout=120)


def ci_profile(directory: Path) -> Path:
    """The repository's SLURM profile with every rule's resources shrunk to the 2-CPU test node (one CPU per GPU
    job, as before the rules stated their own) and squeue status checks."""
    source = REPO / "profiles" / "slurm"
    profile = yaml.safe_load((source / "config.yaml").read_text())
    profile.update({"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 2,
                    "slurm-keep-successful-logs": True, "latency-wait": 5, "cores": 2, "jobs": 4,
                    "retries": 0, "keep-going": False})
    profile["default-resources"].update(mem_mb=300, runtime=10)
    rules = set()
    for rule_file in [*(REPO / "rules").glob("*.smk"), *(REPO / "rules").glob("*/*.smk")]:
        rules |= set(re.findall(r'res\("(\w+)", "mem_mb"', rule_file.read_text()))
    assert GPU_RULES - {"clip_es_gradcam_keep_affinity"} <= rules
    # clip_es_gradcam_keep_affinity is a copy of clip_es_gradcam (use rule ... with)
    profile["set-resources"] = {
        rule: {"mem_mb": 500, "runtime": 10, **({"cpus_per_gpu": 1} if rule in GPU_RULES else {})}
        for rule in sorted(rules | {"clip_es_gradcam_keep_affinity"})
    }
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / profile["slurm-partition-config"], directory)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


def submitted_jobs() -> dict[str, str]:
    """SLURM's record of each job: its comment (rule name and wildcards) -> the per-job TRES request."""
    table = subprocess.run(["squeue", "-t", "all", "-h", "-O", "JobID:12,Comment:80,tres-per-job:30"],
                           capture_output=True, text=True, check=True).stdout
    jobs = {}
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1].startswith("rule_"):
            jobs[fields[1]] = fields[2]
    return jobs


def rule_of(comment: str) -> str:
    """The rule (or grouped rules) named by the plugin's job comment rule_<rule>[_wildcards_...]."""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def test_workflow_on_slurm_matches_local_run(cluster, tmp_path, capsys):
    if cluster is not None:
        _skip_or_fail(cluster, capsys)
    config = yaml.safe_load(TINY.read_text())
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    profile = ci_profile(tmp_path / "profile")
    # The SLURM driver mostly waits between status checks, so the local reference run shares its time.
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_run = pool.submit(snakemake, local_dir, "--cores", "2")
        result = snakemake(slurm_dir, "--workflow-profile", str(profile), "--verbose")
        local_run.result()
    assert (slurm_dir / "results" / config["run"] / "tables/summary.csv").is_file()

    jobs = submitted_jobs()
    with capsys.disabled():
        print("\nSLURM jobs of the integration run (comment -> TRES per job):", file=sys.stderr)
        for comment, tres in sorted(jobs.items()):
            print(f"  {comment:70s} {tres}", file=sys.stderr)
    sbatch_lines = [line for line in (result.stdout + result.stderr).splitlines() if "sbatch call" in line]
    assert sbatch_lines, "the driver's --verbose output shows no sbatch calls"

    seen = {rule_of(comment) for comment in jobs}
    for comment, tres in jobs.items():
        if rule_of(comment) in GPU_RULES:
            assert "gpu:1" in tres, f"GPU rule job {comment} was submitted without a GPU request ({tres})"
        else:
            assert "gpu" not in tres, f"CPU rule job {comment} requested a GPU ({tres})"
    assert GPU_RULES <= seen, f"GPU rules missing from SLURM's records: {GPU_RULES - seen}"
    assert any("crf" in rule for rule in seen) and any("caa" in rule for rule in seen)
    assert {"summary", "per_class_iou", "rule_graph", "rule_times", "run_manifest", "all"}.isdisjoint(seen), \
        "local rules must not be submitted"

    run = Path("results") / config["run"]
    for stage in COMPARED_STAGES:
        local_files = sorted((local_dir / run / stage).rglob("*.h5"))
        assert local_files, f"the local run wrote no {stage} files"
        for local_file in local_files:
            slurm_file = slurm_dir / local_file.relative_to(local_dir)
            expected, got = datasets_of(local_file), datasets_of(slurm_file)
            assert expected.keys() == got.keys(), f"{slurm_file}: different datasets"
            for name, array in expected.items():
                np.testing.assert_array_equal(got[name], array, err_msg=f"{slurm_file}:{name}")
    # Determinism: the two runs started from nothing, on CPU, so their exports and tables are byte-identical.
    for pattern in ("*/pseudo_masks/*/SegmentationClassPseudo/*.png", "*/pseudo_masks/*/list.txt",
                    "*/predicted_masks/*/SegmentationClassPred/*.png", "*/tables/*.csv", "tables/summary.*"):
        local_files = sorted((local_dir / run).glob(pattern))
        assert local_files, f"the local run wrote no {pattern}"
        for local_file in local_files:
            slurm_file = slurm_dir / local_file.relative_to(local_dir)
            assert slurm_file.read_bytes() == local_file.read_bytes(), f"{slurm_file} differs from {local_file}"
