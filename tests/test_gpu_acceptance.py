"""benchmarks/gpu_acceptance.py: its CPU quick mode passes every check and records real figures; a failing part
fails the run; its comparison of two workflow runs and its device check catch what differs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from tests.workflow_helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its sibling benchmarks by name
import gpu_acceptance  # noqa: E402

SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"
PARTS = {"1 CLIP-ES CAM", "2 SemPLeS", "3 segmenter", "4 workflow"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("acceptance")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a CPU run also where the tests have a GPU
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO, env=env)
    return out, result


def test_quick_mode_passes_every_check_and_records_the_figures(quick_run):
    out, result = quick_run
    assert result.returncode == 0, f"{result.stdout[-8000:]}\n{result.stderr[-4000:]}"
    report = json.loads((out / "gpu_acceptance.json").read_text())
    assert report["passed"] and report["device"] == "cpu" and report["quick"]
    assert {c["part"] for c in report["checks"]} == PARTS and all(c["passed"] for c in report["checks"])
    assert "tracebacks" not in report["figures"]
    assert f"{len(report['checks'])}/{len(report['checks'])} checks passed" in result.stdout
    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["nvidia_smi"]

    cam = report["figures"]["1 CLIP-ES CAM"]
    runs = {f"{mode} b{batch}" for mode in ("fp32", "faithful", "bf16") for batch in (1, 2)}
    assert runs <= set(cam) and not any(name.startswith("fp16") for name in cam)  # fp16 autocast: CUDA only
    assert all(cam[name]["images_per_s"] > 0 and cam[name]["peak_gpu_mib"] is None for name in runs)
    assert cam["fp32 b2"]["initial_r"]["min"] >= 0.999  # batches equal one image at a time
    # on the CPU faithful differs from fp32 only by the fp16 position table: initial CAMs nearly equal
    assert cam["faithful b1"]["initial_r"]["min"] > 0.99 and cam["faithful_weights"] == "float32"
    for name in runs - {"fp32 b1"}:
        assert 0 < cam[name]["mask_agreement_pct"]["min"] <= cam[name]["mask_agreement_pct"]["median"] <= 100

    semples = report["figures"]["2 SemPLeS"]
    assert semples["autocast"] == "bfloat16" and not semples["grad_scaler"]
    for stage in ("phase1", "match", "prompts", "refine"):
        figures = semples[stage]
        losses = figures["fp32"]["losses"] + figures["autocast"]["losses"]
        assert len(losses) == 2 * semples["steps"] and all(map(math.isfinite, losses))
        # the conditioned critic keeps the losses off the clamps: -log(1e-4) = 9.21 would mean no gradient
        assert all(0 < loss < 9 for loss in losses)
        assert 0 < figures["first_loss_difference"] < 0.1  # autocast really rounded, and not by much
    assert semples["cams"]["images"] == 3

    segmenter = report["figures"]["3 segmenter"]
    assert len(segmenter["losses"]) == segmenter["iterations"] == 3 and not segmenter["amp"]
    assert segmenter["train_images_per_s"] > 0 and segmenter["predict_images_per_s"] > 0

    workflow = report["figures"]["4 workflow"]
    assert workflow["cpu"]["rc"] == 0 and "gpu" not in workflow and "gpu_vs_cpu" not in workflow
    # every GPU rule ran: the demo CLIP, two text features (CLIP-ES's and ExCEL's fp32), GradCAM, four SemPLeS
    # stages and CAMs, ExCEL's attribute bank and CAMs, segmenter, prediction
    lines = workflow["cpu"]["slot_lines"]
    assert len(lines) == workflow["cpu"]["gpu_jobs"] == 13
    assert {job.split()[0] for job in lines} >= {"train_demo_clip", "semples_refine", "train_segmenter", "predict"}
    assert all(line == ["", "no CUDA device"] for line in lines.values())


def test_a_part_that_raises_fails_the_run_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(report, *args):
        raise RuntimeError("this part broke")

    def fine(report, *args):
        report.check("2 SemPLeS", "stand-in", True, "ran")

    for name in ("cam_part", "segmenter_part", "workflow_part"):
        monkeypatch.setattr(gpu_acceptance, name, broken)
    monkeypatch.setattr(gpu_acceptance, "semples_part", fine)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU run, also where this process has CUDA
    assert gpu_acceptance.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert not report["passed"]
    failed = {(c["part"], c["check"]) for c in report["checks"] if not c["passed"]}
    # part 3 needs part 1's pseudo masks, so it fails without running
    assert failed == {("1 CLIP-ES CAM", "ran"), ("3 segmenter", "ran"), ("4 workflow", "ran")}
    assert "this part broke" in report["figures"]["tracebacks"]["1 CLIP-ES CAM"]
    assert {"check": "stand-in", "part": "2 SemPLeS", "passed": True, "detail": "ran"} in report["checks"]


def test_the_comparison_of_two_runs_finds_every_kind_of_difference(quick_run, tmp_path):
    out, result = quick_run
    assert result.returncode == 0
    reference = out / "workflow" / "cpu" / "results" / "tiny"
    other = tmp_path / "tiny"
    shutil.copytree(reference, other)
    same = gpu_acceptance.compare_runs(reference, other)
    assert same["failures"] == [] and same["files_compared"] > 20
    assert same["worst"] == pytest.approx({"float_r": 1.0, "label_agreement": 1.0, "score_diff": 0.0})

    crf = other / "clip_es" / "crf" / "train" / "00000.h5"
    with h5py.File(crf, "r+") as handle:
        image = sorted(k for k in handle if isinstance(handle[k], h5py.Group))[0]
        labels = handle[image]["labels"]
        labels[...] = np.where(np.arange(labels.size).reshape(labels.shape) % 10 == 0, 99, labels[()])  # 10 %
    cams = other / "clip_es" / "cams" / "train" / "00000.h5"
    with h5py.File(cams, "r+") as handle:
        image = sorted(k for k in handle if isinstance(handle[k], h5py.Group))[0]
        cam = handle[image]["cam"]
        cam[...] = np.random.default_rng(0).random(cam.shape)
    summary = other / "tables" / "summary.csv"
    table = pd.read_csv(summary)
    table.loc[0, "value"] += 0.05
    table.to_csv(summary, index=False)
    (other / "manifests" / "val.tsv").write_text((other / "manifests" / "val.tsv").read_text() + "\n")
    (other / "clip_es" / "predictions" / "val" / "00000.h5").unlink()

    found = gpu_acceptance.compare_runs(reference, other)["failures"]
    assert any(f.startswith(f"clip_es/crf/train/00000.h5/{image}/labels: ") and f.endswith("% of pixels agree")
               for f in found), found
    assert any(f.startswith(f"clip_es/cams/train/00000.h5/{image}/cam: r") for f in found), found
    assert any(f.startswith("tables/summary.csv ") and "|diff| 0.0500" in f for f in found), found
    assert "manifests/val.tsv: bytes differ" in found and "clip_es/predictions/val/00000.h5: missing" in found
    assert len(found) == 5, found


def test_the_device_check_compares_the_slot_with_the_device_torch_saw():
    uuids = {"0": gpu_acceptance.hex_uuid("GPU-1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
             "1": gpu_acceptance.hex_uuid("GPU-00000000-0000-0000-0000-000000000001")}
    seen = "cuda:0 NVIDIA H100 80GB HBM3 uuid=1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert gpu_acceptance.device_problems({"predict a.log": ("0", seen)}, True, uuids) == []
    # a scheduler may name the device by its UUID instead of its index
    by_uuid = ("GPU-1b4e28ba-2fa1-11d2-883f-0016d3cca427", seen)
    assert gpu_acceptance.device_problems({"predict a.log": by_uuid}, True, {}) == []
    wrong = gpu_acceptance.device_problems({"predict a.log": ("1", seen)}, True, uuids)
    assert len(wrong) == 1 and wrong[0].startswith("predict a.log: slot '1'")
    assert gpu_acceptance.device_problems({"predict a.log": (None, "no CUDA device")}, True, uuids)  # no slot
    missing = gpu_acceptance.device_problems({"predict a.log": None}, False, uuids)
    assert missing == ["predict a.log: no 'GPU slot:' line"]
    assert gpu_acceptance.device_problems({"predict a.log": ("", seen)}, False, uuids)  # a CPU run that saw a GPU
    assert gpu_acceptance.device_problems({"predict a.log": ("", "no CUDA device")}, False, uuids) == []
