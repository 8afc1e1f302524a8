import numpy as np
import pandas as pd
import pytest

from wsss.metrics import confusion_matrix, scores
from wsss.shards import shard_names, shard_rows
from wsss.tables import skipped_list, summarize, write_metrics, write_per_class


def test_confusion_ignores_255_and_miou_skips_absent_classes():
    gt = np.array([[0, 0, 1, 255], [1, 1, 0, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 2], [1, 1, 0, 0]], np.uint8)
    hist = confusion_matrix(gt, pred, 3)
    assert hist.sum() == 6
    result = scores(hist)
    # class 0: tp 2, fp 0, fn 1 -> 2/3; class 1: tp 3, fp 1, fn 0 -> 3/4; class 2 absent from GT -> excluded
    assert result["iou"][0] == pytest.approx(2 / 3)
    assert result["iou"][1] == pytest.approx(3 / 4)
    assert np.isnan(result["iou"][2])
    assert result["miou"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert result["pixel_accuracy"] == pytest.approx(5 / 6)


def test_confusion_rejects_out_of_range_predictions_and_shape_mismatch():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 5), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_shards_cover_all_rows_once():
    names = shard_names(10, 4)
    assert names == ["00000", "00001", "00002"]
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)]})
    ids = [i for name in names for i in shard_rows(table, name, 4)["image_id"]]
    assert ids == list(table["image_id"])
    with pytest.raises(ValueError, match="outside"):
        shard_rows(table, "00003", 4)
    with pytest.raises(ValueError, match="shard_size"):
        shard_names(3, 0)


def test_metric_rows_and_summary(tmp_path):
    write_metrics(tmp_path / "a.csv", [{"method": "clip-es", "stage": "cam", "split": "train", "metric": "miou", "value": 0.5}])
    write_metrics(tmp_path / "b.csv", [{"method": "clip-es", "stage": "crf", "split": "train", "metric": "miou", "value": 0.6}])
    with pytest.raises(ValueError, match="unknown"):
        write_metrics(tmp_path / "c.csv", [{"method": "m", "stage": "s", "split": "t", "metric": "x", "value": 1, "extra": 2}])
    table = summarize([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "summary.csv", tmp_path / "summary.md")
    assert list(table["stage"]) == ["cam", "crf"]
    assert pd.read_csv(tmp_path / "summary.csv")["value"].tolist() == [0.5, 0.6]
    markdown = (tmp_path / "summary.md").read_text()
    assert "| method | stage | split | miou |" in markdown
    assert "| clip-es | crf | train | 0.6000 |" in markdown
    per_class = write_per_class(tmp_path / "pc.csv", ["background", "cat"], {"cam_train": np.array([0.9, np.nan])})
    assert per_class.shape == (2, 2)
    with pytest.raises(ValueError, match="2 classes"):
        write_per_class(tmp_path / "pc.csv", ["background", "cat"], {"x": np.array([1.0])})


def test_summary_puts_the_methods_side_by_side(tmp_path):
    rows = [{"method": method, "stage": stage, "split": "train", "metric": metric, "value": value}
            for method, stage, metric, value in [("clip_es", "cam_alpha1", "miou", 0.5),
                                                 ("clip_es", "cam_alpha1", "fwiou", 0.7),
                                                 ("clip_es", "segmenter", "miou", 0.55),
                                                 ("clip_es_logit", "cam_alpha1", "miou", 0.4)]]
    write_metrics(tmp_path / "a.csv", rows)
    summarize([tmp_path / "a.csv"], tmp_path / "summary.csv", tmp_path / "summary.md")
    markdown = (tmp_path / "summary.md").read_text()
    assert "| stage | split | clip_es | clip_es_logit |" in markdown
    assert "| cam_alpha1 | train | 0.5000 | 0.4000 |" in markdown
    assert "| segmenter | train | 0.5500 | – |" in markdown


def test_summary_marks_every_row_of_an_oracle_instance(tmp_path):
    rows = [{"method": method, "stage": "crf", "split": "train", "metric": "miou", "value": value}
            for method, value in [("semples", 0.3), ("semples_gt", 0.35)]]
    write_metrics(tmp_path / "a.csv", rows)
    summarize([tmp_path / "a.csv"], tmp_path / "summary.csv", tmp_path / "summary.md", oracle_methods=["semples_gt"])
    table = pd.read_csv(tmp_path / "summary.csv")
    assert table.set_index("method")["oracle"].to_dict() == {"semples": False, "semples_gt": True}
    markdown = (tmp_path / "summary.md").read_text()
    assert "| stage | split | semples | semples_gt (oracle) |" in markdown
    assert "| semples_gt (oracle) | crf | train | 0.3500 |" in markdown


def test_summary_sets_the_run_beside_the_papers_numbers_and_counts_skipped_images(tmp_path):
    rows = [{"method": "clip_es", "stage": stage, "split": split, "metric": "miou", "value": value}
            for stage, split, value in [("crf", "train", 0.7612), ("segmenter_crf", "val", 0.70)]]
    write_metrics(tmp_path / "a.csv", rows)
    paper = {"clip_es": {"crf/train": 0.75, "segmenter_crf/val": 0.711, "cam_alpha1/train": 0.708}}
    counts = {"train": {"images": 3, "used": 1, "skipped: no labels": 1, "skipped: bad files": 1}}
    summarize([tmp_path / "a.csv"], tmp_path / "summary.csv", tmp_path / "summary.md", paper=paper,
              split_images=counts)
    markdown = (tmp_path / "summary.md").read_text()
    assert "| clip_es | crf/train | 0.7612 | 0.7500 | +0.0112 |" in markdown
    assert "| clip_es | segmenter_crf/val | 0.7000 | 0.7110 | -0.0110 |" in markdown
    assert "| clip_es | cam_alpha1/train | – | 0.7080 | – |" in markdown  # a stage this run did not score
    assert "| split | images | used | skipped: no labels | skipped: bad files |" in markdown
    assert "| train | 3 | 1 | 1 | 1 |" in markdown


def test_summary_names_the_skipped_images_and_where_the_rest_are(tmp_path):
    rows = [{"method": "m", "stage": "crf", "split": "train", "metric": "miou", "value": 0.5}]
    write_metrics(tmp_path / "a.csv", rows)
    manifest = pd.DataFrame({"image_id": [f"img{i}" for i in range(14)],
                             "skip_reason": ["", "no labels"] + ["bad file: truncated"] * 12})
    named = skipped_list(manifest, "manifests/train.tsv")
    assert named.startswith("`img1` (no labels), `img2` (bad file: truncated), ")
    assert "`img10` (bad file: truncated), and 3 more (all of them: manifests/train.tsv, column skip_reason)" in named
    assert "`img11`" not in named
    assert skipped_list(manifest.iloc[:1], "manifests/val.tsv") == ""
    summarize([tmp_path / "a.csv"], tmp_path / "s.csv", tmp_path / "s.md", skipped={"train": named, "val": ""})
    markdown = (tmp_path / "s.md").read_text()
    assert f"Skipped in train: {named}" in markdown and "Skipped in val" not in markdown
