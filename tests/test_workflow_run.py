"""One real run of the whole DAG on a tiny demo world, then what a second run, edited settings and edited code schedule."""

import base64
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from tests.workflow_helpers import REPO, TINY, datasets_of, planned_jobs, planned_methods, snakemake, write_config
from wsss.h5store import get_image, image_ids, open_stage, provenance

RUN = "results/tiny"
ES = f"{RUN}/clip_es"  # the instance with the whole tail (and caa.keep_affinity)
ABLATION = f"{RUN}/clip_es_logit"  # an instance that stops at the pseudo masks
SEMPLES = f"{RUN}/semples"  # SemPLeS at toy size, also stopped at the pseudo masks
EXCEL = f"{RUN}/excel"  # ExCEL, training-free, also stopped at the pseudo masks
UPSTREAM = {"generate_demo_world", "manifest", "train_demo_clip", "text_features"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    snakemake(workdir, "--cores", "2")
    return workdir


def test_every_stage_writes_its_documented_layout(tiny_run):
    with open_stage(tiny_run / ES / "gradcam/train/00000.h5") as handle:
        ids = image_ids(handle)
        assert len(ids) == 5
        initial = get_image(handle, ids[0])
    with open_stage(tiny_run / ES / "cams/train/00000.h5") as handle:
        assert provenance(tiny_run / ES / "cams/train/00000.h5")["stage"] == "cams"
        stored = get_image(handle, ids[0])
        assert stored["keys"].dtype == np.int16
        k = len(stored["keys"])
        assert stored["cam"].dtype == np.float32 and stored["cam"].shape[0] == k
        assert 0.0 <= stored["cam"].min() and stored["cam"].max() <= 1.0
        # the contract keeps the GradCAM map beside the refined one, so evaluation scores both
        np.testing.assert_array_equal(stored["cam_initial"], initial["cam"])
        grid = stored["cam"].shape[1:]
        # input_scale 2 in the tiny config; the demo CLIP's patch is 8 px
        assert grid == (math.ceil(2 * stored["height"] / 8), math.ceil(2 * stored["width"] / 8))
    with open_stage(tiny_run / ES / "crf/train/00000.h5") as handle:
        crf = get_image(handle, ids[0])
        assert crf["labels"].shape == (stored["height"], stored["width"]) and crf["labels"].dtype == np.uint8
        assert crf["confidence"].dtype == np.float16
        assert set(np.unique(crf["labels"])) <= {0, *(stored["keys"] + 1).tolist()}
    with open_stage(tiny_run / ES / "predictions/val/00000.h5") as handle:
        prediction = get_image(handle, image_ids(handle)[0])
        assert {"labels", "labels_crf"} <= set(prediction)
    # kept because clip_es sets caa.keep_affinity; the ablation's were temporary
    with open_stage(tiny_run / ES / "affinity/train/00000.h5") as handle:
        n_tokens = grid[0] * grid[1]
        assert get_image(handle, ids[0])["attention"].shape == (n_tokens, n_tokens)
    assert not (tiny_run / ABLATION / "affinity").exists()
    assert not (tiny_run / ABLATION / "segmenter").exists()


def test_excel_writes_the_method_contract_from_its_attribute_bank(tiny_run):
    manifest = pd.read_csv(tiny_run / RUN / "manifests/train.tsv", sep="\t", keep_default_na=False).set_index("image_id")
    banks = sorted((tiny_run / RUN / "attributes").glob("*/bank.h5"))
    assert len(banks) == 1
    with open_stage(banks[0]) as bank:
        assert bank["centres"].shape == (12, 128) and bank["flags"].shape == (6, 12)  # 6 demo classes, 12 centres
        assert bank.attrs["sentences"] == 30
    with open_stage(tiny_run / EXCEL / "cams/train/00000.h5") as handle:
        ids = image_ids(handle)
        assert len(ids) == 5
        for image_id in ids:
            stored = get_image(handle, image_id)
            keys = stored["keys"]
            assert keys.dtype == np.int16 and list(keys) == sorted(keys), "ascending class order"
            labels = sorted(int(k) for k in str(manifest.loc[image_id, "labels"]).split())
            assert list(keys) == labels
            for name in ("cam", "cam_initial"):
                assert stored[name].shape == (len(keys), 6, 6), "48 px square input, patch 8"
                assert stored[name].dtype == np.float32
                assert 0.0 <= stored[name].min() and stored[name].max() <= 1.0
            assert (stored["height"], stored["width"]) == (manifest.loc[image_id, "height"],
                                                           manifest.loc[image_id, "width"])
    # its seeds: PAR (pseudo_masks.refiner: par) instead of the CRF, in the same layout, scored as stage par
    assert not (tiny_run / EXCEL / "crf").exists()
    with open_stage(tiny_run / EXCEL / "cams/train/00000.h5") as handle:
        first = get_image(handle, ids[0])
    with open_stage(tiny_run / EXCEL / "par/train/00000.h5") as handle:
        seeds = get_image(handle, ids[0])
    assert seeds["labels"].shape == (first["height"], first["width"]) and seeds["labels"].dtype == np.uint8
    assert seeds["confidence"].dtype == np.float16
    assert set(np.unique(seeds["labels"])) <= {0, *(first["keys"] + 1).tolist()}
    summary = pd.read_csv(tiny_run / RUN / "tables/summary.csv")
    assert {"cam_alpha1", "cam_initial_alpha1", "par"} <= set(summary[summary["method"] == "excel"]["stage"])


def test_semples_writes_the_method_contract_and_its_training_stages(tiny_run):
    with open_stage(tiny_run / SEMPLES / "cams/train/00000.h5") as handle:
        ids = image_ids(handle)
        stored = get_image(handle, ids[0])
    # SemPLeS's maps are summed over scales and flips at image resolution, min-max normalised per class
    # (with the release's +1e-8, so a nearly flat map of the toy training peaks a little under 1)
    assert stored["cam"].shape == (len(stored["keys"]), stored["height"], stored["width"])
    per_class = stored["cam"].reshape(len(stored["keys"]), -1)
    peaks = per_class.max(axis=1)
    assert np.allclose(per_class.min(axis=1), 0.0) and np.all((peaks > 0.5) & (peaks <= 1.0))
    with open_stage(tiny_run / SEMPLES / "crf/train/00000.h5") as handle:
        crf = get_image(handle, ids[0])
    assert set(np.unique(crf["labels"])) <= {0, *(stored["keys"] + 1).tolist()} and 255 not in crf["labels"]
    training = tiny_run / RUN / "training/semples"
    for stage, name in (("phase1", "model.pt"), ("match", "model.pt"), ("prompts", "prompts.pt"),
                        ("refine", "model.pt")):
        (folder,) = (training / stage).iterdir()
        assert (folder / name).is_file() and (folder / "checkpoints/loss_history.csv").is_file(), stage
    (prompts,) = (training / "prompts").iterdir()
    words = pd.read_csv(prompts / "nearest_words.csv")
    assert list(words.columns) == ["class", "rank", "word", "cosine"] and len(words) == 6 * 5
    summary = pd.read_csv(tiny_run / RUN / "tables/summary.csv")
    stages = set(summary[summary["method"] == "semples"]["stage"])
    assert {"cam_t0.43", "crf"} <= stages, stages


def test_instances_differ_only_where_their_settings_do(tiny_run):
    with open_stage(tiny_run / ES / "gradcam/train/00001.h5") as es, \
            open_stage(tiny_run / ABLATION / "gradcam/train/00001.h5") as logit:
        image_id = image_ids(es)[0]
        assert not np.allclose(get_image(es, image_id)["cam"], get_image(logit, image_id)["cam"])
    text = sorted((tiny_run / RUN / "text").glob("*/text_features.h5"))
    assert len(text) == 2, "the CLIP-ES instances share one text-feature file; ExCEL's fp32 text has its own"


def test_provenance_records_parameters_and_inputs(tiny_run):
    info = provenance(tiny_run / ES / "cams/train/00001.h5")
    assert json.loads(info["params_json"])["box_threshold"] == 0.4
    inputs = json.loads(info["input_digests"])
    assert any(path.endswith("clip_es/gradcam/train/00001.h5") for path in inputs)
    assert all(len(digest) == 64 for digest in inputs.values())


def test_summary_has_a_row_per_method_stage_and_split(tiny_run):
    summary = pd.read_csv(tiny_run / RUN / "tables/summary.csv")
    assert list(summary.columns) == ["method", "stage", "split", "metric", "value", "oracle"]
    assert not summary["oracle"].any(), "nothing in the tiny run is chosen on ground truth"
    miou = summary[summary["metric"] == "miou"].set_index(["method", "stage"])["value"]
    for stage in ("cam_initial_alpha1", "cam_alpha1", "cam_initial_alpha2", "cam_alpha2", "crf",
                  "segmenter", "segmenter_crf"):
        assert 0.0 <= miou[("clip_es", stage)] <= 1.0
    ablation = set(summary[summary["method"] == "clip_es_logit"]["stage"])
    assert {"cam_initial_alpha1", "cam_alpha1", "crf"} <= ablation and "segmenter" not in ablation
    assert not summary.duplicated(["method", "stage", "split", "metric"]).any()
    assert set(summary[summary["stage"] == "segmenter"]["split"]) == {"val"}
    markdown = (tiny_run / RUN / "tables/summary.md").read_text()
    assert "| method | stage | split | miou |" in markdown and "| clip_es_logit | crf | train |" in markdown
    per_class = pd.read_csv(tiny_run / ES / "tables/segmenter_per_class.csv")
    assert per_class["class"].tolist()[0] == "background" and len(per_class) == 7


def test_exported_masks_are_training_labels(tiny_run):
    out = tiny_run / ES / "pseudo_masks/train"
    lines = (out / "list.txt").read_text().splitlines()
    assert len(lines) == 12
    image_path, mask_path = lines[0].split()
    assert (out / mask_path.lstrip("/")).is_file() and (out / image_path.lstrip("/")).is_file()
    image_id = mask_path.rsplit("/", 1)[1][:-4]
    mask = Image.open(out / mask_path.lstrip("/"))
    assert mask.mode == "P"
    shard = next(p for p in sorted((tiny_run / ES / "crf/train").glob("*.h5"))
                 if image_id in image_ids(open_stage(p)))
    with open_stage(shard) as handle:
        stored = get_image(handle, image_id)
    # prob_unary with the threshold left to the mode: CLIP-ES's 0.95 rule
    expected = np.where(stored["confidence"].astype(np.float64) < 0.95, 255, stored["labels"])
    np.testing.assert_array_equal(np.array(mask), expected)


def test_second_run_has_nothing_to_do(tiny_run):
    result = snakemake(tiny_run, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert planned_jobs(result) == {}


def _reordered(value):
    """Every mapping of a config with its keys in reverse order."""
    if isinstance(value, dict):
        return {key: _reordered(value[key]) for key in reversed(list(value))}
    return value


def test_yaml_key_order_changes_nothing(tiny_run, tmp_path):
    config = tmp_path / "reordered.yaml"
    config.write_text(yaml.safe_dump(_reordered(yaml.safe_load(TINY.read_text())), sort_keys=False))
    assert planned_jobs(snakemake(tiny_run, "-n", config=config)) == {}


def _scheduled(workdir, tmp_path, **changes):
    result = snakemake(workdir, "-n", config=write_config(tmp_path / "changed.yaml", TINY, **changes))
    return planned_jobs(result), planned_methods(result)


def test_one_instance_setting_schedules_only_that_instance(tiny_run, tmp_path):
    jobs, methods = _scheduled(tiny_run, tmp_path, methods={"clip_es_logit": {"caa": {"power": 3}}})
    assert not UPSTREAM & set(jobs), "no shared upstream job reruns"
    assert {"clip_es_gradcam", "clip_es_caa", "crf", "evaluate_cams", "evaluate_pseudo_masks"} <= set(jobs)
    assert set().union(*methods.values()) == {"clip_es_logit"}, methods


def test_caa_parameter_with_kept_affinity_schedules_no_gradcam_jobs(tiny_run, tmp_path):
    jobs, methods = _scheduled(tiny_run, tmp_path, methods={"clip_es": {"caa": {"box_threshold": 0.5}}})
    assert not {"clip_es_gradcam", "clip_es_gradcam_keep_affinity"} & set(jobs) and not UPSTREAM & set(jobs)
    assert jobs["clip_es_caa"] == 3 and jobs["crf"] == 3 and jobs["evaluate_cams"] == 1
    assert set().union(*methods.values()) == {"clip_es"}


# what follows any change of results (the rule graph is redrawn for any change of the config)
REPORT = {"summary", "per_class_iou", "rule_times", "run_manifest", "all"}
CONFIG_CHANGED = REPORT | {"rule_graph"}


def test_crf_parameter_reruns_only_crf_and_what_follows(tiny_run, tmp_path):
    jobs, _ = _scheduled(tiny_run, tmp_path, methods={"clip_es": {"pseudo_masks": {"crf": {"iters": 3}}}})
    assert set(jobs) == {"crf", "evaluate_pseudo_masks", "export_pseudo_masks", "train_segmenter", "predict",
                         "export_predictions", "evaluate_segmenter", "training_figure", "figures"} | CONFIG_CHANGED


def test_confidence_threshold_is_applied_downstream_of_the_crf(tiny_run, tmp_path):
    jobs, _ = _scheduled(tiny_run, tmp_path, methods={"clip_es": {"pseudo_masks": {"confidence_threshold": 0.9}}})
    assert set(jobs) == {"export_pseudo_masks", "evaluate_pseudo_masks", "train_segmenter", "predict",
                         "export_predictions", "evaluate_segmenter", "training_figure", "figures"} | CONFIG_CHANGED


def test_lambda3_reruns_stage_c_and_that_instance_only(tiny_run, tmp_path):
    jobs, methods = _scheduled(tiny_run, tmp_path, methods={"semples": {"refine": {"lambda3": 0.2}}})
    assert set(jobs) == {"semples_refine", "semples_cams", "crf", "evaluate_cams", "evaluate_pseudo_masks",
                         "export_pseudo_masks", "figures"} | CONFIG_CHANGED, "not phase 1, stage a or b, nor CLIP-ES"
    assert set().union(*methods.values()) == {"semples"}


def test_segmenter_settings_rerun_only_their_own_rules(tiny_run, tmp_path):
    jobs, _ = _scheduled(tiny_run, tmp_path, segmenter={"train": {"lr": 0.02}})
    assert set(jobs) == {"train_segmenter", "predict", "export_predictions", "evaluate_segmenter",
                         "training_figure", "figures"} | CONFIG_CHANGED
    jobs, _ = _scheduled(tiny_run, tmp_path, segmenter={"predict": {"flip": False}})
    # the sample strips show the single-scale prediction without flips: test-time options leave them
    assert set(jobs) == {"predict", "export_predictions", "evaluate_segmenter"} | CONFIG_CHANGED, \
        "test-time options retrain"


def _workflow_copy(destination):
    """A copy of the workflow's code (Snakefile, rules, scripts, package) to edit without touching the checkout."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, destination / name)
    for name in ("rules", "workflow_scripts", "wsss", "envs", "report"):
        shutil.copytree(REPO / name, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return destination / "Snakefile"


def _dry_run_of_copy(snakefile, workdir):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir),
                             "--configfile", str(TINY), "--workflow-profile", "none", "-n"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


AFTER_CAA = {"clip_es_caa", "crf", "evaluate_cams", "evaluate_pseudo_masks", "export_pseudo_masks", "train_segmenter",
             "predict", "export_predictions", "evaluate_segmenter", "training_figure", "figures"} | REPORT
RUN_LEVEL = {"summary": set(), "per_class_iou": set(), "rule_times": set(), "run_manifest": set(), "all": set()}


@pytest.mark.parametrize(
    ("module", "dependent"),
    [
        # the segmenter's training imports its augmentation; prediction and scores follow its new model
        ("segmenter/augment.py", {"train_segmenter": {"clip_es"}, "predict": {"clip_es"}, "export_predictions": {"clip_es"},
                                  "evaluate_segmenter": {"clip_es"}, "training_figure": {"clip_es"},
                                  # the figures draw the segmenter's predictions, so their code imports it too
                                  "figures": {"clip_es", "clip_es_logit", "semples", "excel"}, **RUN_LEVEL}),
        # the CAA refinement: the CAA rule of both instances and everything after it. GradCAM reruns only
        # where its temporary affinity input is gone (clip_es_logit); clip_es keeps its affinity. It is
        # CLIP-ES's and ExCEL's, which share it (the shared CLIP machinery in wsss/clip/)
        ("clip/affinity.py", {**{rule: {"clip_es", "clip_es_logit"} for rule in AFTER_CAA - set(RUN_LEVEL)},
                              "train_segmenter": {"clip_es"}, "predict": {"clip_es"}, "evaluate_segmenter": {"clip_es"},
                              "export_predictions": {"clip_es"}, "training_figure": {"clip_es"},
                              "clip_es_gradcam": {"clip_es_logit"}, "excel_cams": {"excel"},
                              "par": {"excel"},  # the tiny ExCEL instance's seeds
                              **{rule: {"clip_es", "clip_es_logit", "excel"}
                                 for rule in ("evaluate_cams", "evaluate_pseudo_masks", "export_pseudo_masks",
                                              "figures")},
                              **RUN_LEVEL}),
    ],
)
def test_editing_a_deep_module_reruns_exactly_its_dependent_rules(tiny_run, tmp_path, module, dependent):
    snakefile = _workflow_copy(tmp_path)
    assert planned_jobs(_dry_run_of_copy(snakefile, tiny_run)) == {}, "an identical copy of the code changes nothing"
    path = tmp_path / "wsss" / module
    path.write_text(path.read_text() + "\n# an edited comment\n")
    assert planned_methods(_dry_run_of_copy(snakefile, tiny_run)) == dependent


# --- kills: a job killed outright (OOM killer, SLURM, node failure) and a plain rerun -----------------


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the Snakemake driver's jobs and their workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_job_when(workdir: Path, target: str, appeared, attempts: int = 6) -> list[Path]:
    """Run snakemake for ``target``; SIGKILL its job (not the driver) as soon as ``appeared()`` returns files.

    Returns those files (the job's temporaries at the moment of the kill). A job can finish between two
    polls, so the run is repeated (output removed) until the kill lands mid-write. Like the reference
    run, it uses two cores: a job's thread count may change its floating-point sums.
    """
    for _ in range(attempts):
        (workdir / target).unlink(missing_ok=True)
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                   "--configfile", str(TINY), "--workflow-profile", "none", "--cores", "2", target]
        driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen: list[Path] = []
        while driver.poll() is None and not seen:
            seen = appeared()
            time.sleep(0.005)
        if seen:
            for pid in _descendants(driver.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        driver.wait(timeout=120)
        if seen and driver.returncode != 0:
            return seen
    raise AssertionError(f"{target}: the job finished before it could be killed, {attempts} times")


def _temporaries(folder: Path):
    return lambda: sorted(folder.glob(".*.tmp-*")) if folder.is_dir() else []


@pytest.mark.parametrize("stage", ["clip_es/gradcam/train/00001.h5", "clip_es/crf/train/00001.h5"])
def test_a_shard_job_killed_mid_write_reruns_to_identical_output(tiny_run, tmp_path, stage):
    workdir = tmp_path / "work"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    target = f"{RUN}/{stage}"
    left = _kill_job_when(workdir, target, _temporaries((workdir / target).parent))
    assert all(path.exists() for path in left), "the kill should leave the job's temporary file behind"
    assert not (workdir / target).exists()
    snakemake(workdir, "--cores", "2", target)  # a plain rerun
    assert sorted(workdir.joinpath(RUN).rglob("*.tmp-*")) == [], "the rerun must remove what the kill left"
    expected, got = datasets_of(tiny_run / target), datasets_of(workdir / target)
    assert expected.keys() == got.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=f"{target}:{name}")


def test_segmenter_training_killed_after_a_checkpoint_resumes_to_identical_weights(tiny_run, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    target = f"{ES}/segmenter/model.pt"
    checkpoints = workdir / ES / "segmenter" / "checkpoints"
    shutil.rmtree(checkpoints, ignore_errors=True)
    left = _kill_job_when(workdir, target, lambda: sorted(checkpoints.rglob("checkpoint.pt")))
    assert left and not (workdir / target).exists()
    result = snakemake(workdir, "--cores", "2", target)  # a plain rerun resumes from the checkpoint
    log = (workdir / ES / "logs" / "train_segmenter.log").read_text()
    assert "resum" in log.lower(), f"the rerun did not resume:\n{log[-2000:]}\n{result.stderr[-2000:]}"
    assert sorted(workdir.joinpath(RUN).rglob("*.tmp-*")) == []
    expected = torch.load(tiny_run / target, map_location="cpu", weights_only=True)
    got = torch.load(workdir / target, map_location="cpu", weights_only=True)
    assert expected["model"].keys() == got["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(got["model"][name], tensor), name


def test_run_manifest_records_provenance_and_verify_names_a_changed_file(tiny_run, tmp_path):
    manifest_path = tiny_run / RUN / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["versions"]["torch"] == torch.__version__
    assert {"python", "torch", "cuda", "open_clip", "snakemake", "pydensecrf"} <= set(manifest["versions"])
    assert set(manifest["git"]) == {"commit", "dirty"}
    assert manifest["config"]["run"] == "tiny" and len(manifest["config_digest"]) == 64
    assert set(manifest["dataset_manifests"]) == {"manifests/train.tsv", "manifests/val.tsv"}
    outputs = manifest["outputs"]
    assert "tables/summary.csv" in outputs and "clip/demo_clip.pt" in outputs and "clip_es/segmenter/model.pt" in outputs
    assert not any("/logs/" in f"/{name}" or name.endswith(".log") for name in outputs)
    verify = [sys.executable, "-m", "wsss.provenance"]
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    copied = workdir / RUN / "manifest.json"
    (workdir / RUN / "report.html").write_text("<html></html>")  # make report writes it after the manifest
    passed = subprocess.run([*verify, str(copied)], capture_output=True, text=True)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert f"all {len(outputs)} outputs" in passed.stdout
    changed = workdir / RUN / "clip_es/pseudo_masks/train/list.txt"
    data = bytearray(changed.read_bytes())
    data[0] ^= 1  # one bit of one byte
    changed.write_bytes(bytes(data))
    failed = subprocess.run([*verify, str(copied)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stdout.splitlines() == [f"{changed}: differs from the manifest (sha256 {outputs[str(changed.relative_to(workdir / RUN))][:12]}...)"]


# --- the report, rendered by a browser --------------------------------------------------------------

_IMAGE_CHECK = """<!doctype html><html><body>{images}<script>
window.addEventListener("load", () => {{
  const state = [...document.images].map(img => img.id + "=" + (img.complete && img.naturalWidth > 0 ? "ok" : "broken"));
  const out = document.createElement("pre"); out.id = "checked"; out.textContent = state.join(" ");
  document.body.appendChild(out);
}});
</script></body></html>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs the Debian package)")
        pytest.skip("chromium is not installed here: the report is not rendered")
    return found


def _rendered(chromium: str, page: Path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium."""
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                             "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _text(dom: str) -> str:
    """The visible words of a DOM, tags removed and white space collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def test_report_shows_the_summary_as_text_and_the_instances_side_by_side(tiny_run, tmp_path):
    chromium = _chromium()
    report = tmp_path / "report.html"
    snakemake(tiny_run, "--report", str(report))
    html = report.read_text()
    results = json.loads(re.search(r"var results = (\{.*?\});\s*\n", html, re.S).group(1))
    categories = json.loads(re.search(r"var categories = (\{.*?\});\s*\n", html, re.S).group(1))
    methods = sorted(yaml.safe_load(TINY.read_text())["methods"])

    # the figures of each category, by path: the instances side by side per stage, then per instance
    def figures(category):
        paths = [p for group in categories[category].values() for p in group]
        return {p for p in paths if results[p]["mime_type"] in ("image/png", "image/svg+xml")}

    assert sorted(categories) == ["1. Summary", "2. IoU per class", "3. Samples", "4. Pseudo-mask confidence",
                                "5. Segmenter training", "6. Time and memory", "7. Configuration and provenance"]
    assert figures("1. Summary") == {f"{RUN}/figures/rule_graph.svg"}
    assert figures("2. IoU per class") == {f"{RUN}/figures/per_class_iou_{stage}.svg"
                                           for stage in ("cams", "pseudo_masks", "segmenter")}
    assert figures("3. Samples") == {f"{RUN}/{m}/figures/samples.png" for m in methods}
    assert figures("4. Pseudo-mask confidence") == {f"{RUN}/{m}/figures/confidence.png" for m in methods}
    summary = pd.read_csv(tiny_run / RUN / "tables/summary.csv")
    trained = set(summary[summary["stage"] == "segmenter"]["method"])
    assert trained and figures("5. Segmenter training") == {f"{RUN}/{m}/figures/training.png" for m in trained}
    assert {f"{RUN}/tables/summary.html", f"{RUN}/tables/summary.csv"} <= {
        p for group in categories["1. Summary"].values() for p in group}
    # every embedded figure decodes in the browser (no broken image)
    names = sorted(p for p, entry in results.items() if entry["mime_type"] in ("image/png", "image/svg+xml"))
    page = tmp_path / "images.html"
    page.write_text(_IMAGE_CHECK.format(images="".join(
        f'<img id="f{i}" src="{results[name]["data_uri"]}">' for i, name in enumerate(names))))
    checked = re.search(r'<pre id="checked">([^<]*)</pre>', _rendered(chromium, page)).group(1).split()
    assert checked == [f"f{i}=ok" for i in range(len(names))], dict(zip(names, checked))
    # each per-class figure has every instance that scored the stage in its legend, named as in the summary
    miou = summary[summary["metric"] == "miou"]
    cams_svg = (tiny_run / RUN / "figures/per_class_iou_cams.svg").read_text()
    for method in methods:
        first_cam = next(s for s in miou[miou["method"] == method]["stage"] if s.startswith("cam_") and
                         not s.startswith("cam_initial"))
        assert f"{method}: {first_cam} (mIoU" in cams_svg
    # the landing page shows the mIoU table as text: every instance and every mIoU of the summary
    text = _text(_rendered(chromium, report))
    assert "mIoU of every method instance" in text
    for method in methods:
        assert method in text, f"{method} does not appear in the rendered report"
    for value in miou["value"]:
        assert f"{value:.4f}" in text, f"mIoU {value:.4f} is not shown on the report's first page"
    # the summary page inside the report (an HTML result) renders every table with the same numbers
    encoded = results[f"{RUN}/tables/summary.html"]["data_uri"].split(",", 1)[1]
    summary_page = tmp_path / "summary.html"
    summary_page.write_bytes(base64.b64decode(encoded))
    summary_text = _text(_rendered(chromium, summary_page))
    for title in ("mIoU by method", "All metrics", "Images per split"):
        assert title in summary_text
    for value in summary["value"].dropna():
        assert f"{value:.4f}" in summary_text
