"""One real run of the whole DAG on a tiny demo world, then what a second run and edited parameters schedule."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.workflow_helpers import TINY, planned_jobs, snakemake, write_config
from wsss.h5store import get_image, image_ids, open_stage, provenance

RUN = "results/tiny"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    snakemake(workdir, "--cores", "2")
    return workdir


def test_every_stage_writes_its_documented_layout(tiny_run):
    cams_file = tiny_run / RUN / "cams/train/00000.h5"
    with open_stage(cams_file) as handle:
        ids = image_ids(handle)
        assert len(ids) == 5
        stored = get_image(handle, ids[0])
        assert stored["keys"].dtype == np.int16
        k = len(stored["keys"])
        assert stored["cam"].dtype == np.float32 and stored["cam"].shape[0] == k
        assert 0.0 <= stored["cam"].min() and stored["cam"].max() <= 1.0
        assert {"cam_logit", "cam_softmax_nobg"} <= set(stored)  # cam.ablations: true in the tiny config
        grid = stored["cam"].shape[1:]
        # cam.input_scale: 2 in the tiny config; the demo CLIP's patch is 8 px
        assert grid == (math.ceil(2 * stored["height"] / 8), math.ceil(2 * stored["width"] / 8))
    with open_stage(tiny_run / RUN / "caa/train/00000.h5") as handle:
        refined = get_image(handle, ids[0])
        assert refined["cam"].shape == (k, *grid)
        assert refined["keys"].tolist() == stored["keys"].tolist()
    with open_stage(tiny_run / RUN / "crf/train/00000.h5") as handle:
        crf = get_image(handle, ids[0])
        assert crf["labels"].shape == (stored["height"], stored["width"]) and crf["labels"].dtype == np.uint8
        assert crf["confidence"].dtype == np.float16
        assert set(np.unique(crf["labels"])) <= {0, *(stored["keys"] + 1).tolist()}
    with open_stage(tiny_run / RUN / "predictions/val/00000.h5") as handle:
        prediction = get_image(handle, image_ids(handle)[0])
        assert {"labels", "labels_crf"} <= set(prediction)
    # kept because the tiny config sets caa.keep_affinity (otherwise temporary)
    with open_stage(tiny_run / RUN / "affinity/train/00000.h5") as handle:
        n_tokens = grid[0] * grid[1]
        assert get_image(handle, ids[0])["attention"].shape == (n_tokens, n_tokens)


def test_provenance_records_parameters_and_inputs(tiny_run):
    info = provenance(tiny_run / RUN / "caa/train/00001.h5")
    assert info["stage"] == "caa"
    assert json.loads(info["params_json"])["box_threshold"] == 0.4
    inputs = json.loads(info["input_digests"])
    assert any(path.endswith("cams/train/00001.h5") for path in inputs)
    assert all(len(digest) == 64 for digest in inputs.values())


def test_summary_joins_every_evaluation(tiny_run):
    summary = pd.read_csv(tiny_run / RUN / "tables/summary.csv")
    assert list(summary.columns) == ["method", "stage", "split", "metric", "value"]
    miou = summary[summary["metric"] == "miou"].set_index("stage")["value"]
    for stage in ("cam_alpha1", "cam_alpha2", "cam_caa_alpha1", "cam_gradcam_logit_alpha1",
                  "cam_softmax_no_bg_alpha1", "crf", "segmenter", "segmenter_crf"):
        assert 0.0 <= miou[stage] <= 1.0
    assert set(summary[summary["stage"] == "segmenter"]["split"]) == {"val"}
    assert "| method | stage | split | miou |" in (tiny_run / RUN / "tables/summary.md").read_text()
    per_class = pd.read_csv(tiny_run / RUN / "tables/segmenter_per_class.csv")
    assert per_class["class"].tolist()[0] == "background" and len(per_class) == 7


def test_exported_masks_are_training_labels(tiny_run):
    out = tiny_run / RUN / "pseudo_masks/train"
    lines = (out / "list.txt").read_text().splitlines()
    assert len(lines) == 12
    image_path, mask_path = lines[0].split()
    assert (out / mask_path.lstrip("/")).is_file() and (out / image_path.lstrip("/")).is_file()
    image_id = mask_path.rsplit("/", 1)[1][:-4]
    mask = Image.open(out / mask_path.lstrip("/"))
    assert mask.mode == "P"
    shard = next(p for p in sorted((tiny_run / RUN / "crf/train").glob("*.h5"))
                 if image_id in image_ids(open_stage(p)))
    with open_stage(shard) as handle:
        stored = get_image(handle, image_id)
    expected = np.where(stored["confidence"].astype(np.float64) < 0.95, 255, stored["labels"])
    np.testing.assert_array_equal(np.array(mask), expected)


def test_second_run_has_nothing_to_do(tiny_run):
    result = snakemake(tiny_run, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert planned_jobs(result) == {}


def _scheduled(workdir, tmp_path, **changes):
    return planned_jobs(snakemake(workdir, "-n", config=write_config(tmp_path / "changed.yaml", TINY, **changes)))


def test_caa_parameter_schedules_no_cam_jobs(tiny_run, tmp_path):
    # With caa.keep_affinity (the switch for CAA ablations) the CAM rule's outputs all stay current.
    jobs = _scheduled(tiny_run, tmp_path, caa={"box_threshold": 0.5})
    assert "cams" not in jobs and "train_demo_clip" not in jobs and "text_features" not in jobs
    assert jobs["caa"] == 3 and jobs["crf"] == 3 and jobs["evaluate_cams"] == 1


def test_crf_parameter_reruns_only_crf_and_what_follows(tiny_run, tmp_path):
    jobs = _scheduled(tiny_run, tmp_path, crf={"iters": 3})
    assert set(jobs) == {"crf", "evaluate_pseudo_masks", "export_pseudo_masks", "train_segmenter", "predict",
                         "evaluate_segmenter", "summary", "all"}


def test_confidence_threshold_is_applied_downstream_of_the_crf(tiny_run, tmp_path):
    jobs = _scheduled(tiny_run, tmp_path, crf={"confidence_threshold": 0.9})
    assert "crf" not in jobs
    assert {"export_pseudo_masks", "evaluate_pseudo_masks", "train_segmenter"} <= set(jobs)


def test_segmenter_parameter_reruns_only_training_prediction_evaluation(tiny_run, tmp_path):
    jobs = _scheduled(tiny_run, tmp_path, segmenter={"lr": 0.02})
    assert set(jobs) == {"train_segmenter", "predict", "evaluate_segmenter", "summary", "all"}
    jobs = _scheduled(tiny_run, tmp_path, segmenter={"test_flip": False})
    assert set(jobs) == {"predict", "evaluate_segmenter", "summary", "all"}, "test-time options retrain"
