import numpy as np
import pandas as pd
import pytest

from wsss.metrics import confusion_matrix, scores
from wsss.shards import shard_names, shard_rows
from wsss.tables import skipped_list, stage_order, summarize, write_metrics, write_per_class


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


def test_every_table_follows_one_stage_order(tmp_path):
    stages = ["segmenter_crf", "crf", "cam_t0.43", "segmenter", "cam_alpha1", "cam_initial_alpha1"]
    assert sorted(stages, key=stage_order) == ["cam_initial_alpha1", "cam_alpha1", "cam_t0.43", "crf", "segmenter",
                                               "segmenter_crf"]
    rows = [{"method": method, "stage": stage, "split": "val" if stage.startswith("segmenter") else "train",
             "metric": "miou", "value": 0.1 * (i + 1)}
            for i, (method, stage) in enumerate([("semples", "segmenter"), ("semples", "crf"), ("semples", "cam_t0.43"),
                                                 ("clip_es", "crf"), ("clip_es", "cam_alpha1"),
                                                 ("clip_es", "cam_initial_alpha1")])]
    write_metrics(tmp_path / "a.csv", rows)
    table = summarize([tmp_path / "a.csv"], tmp_path / "s.csv", tmp_path / "s.md", html_path=tmp_path / "s.html",
                      wide_csv_path=tmp_path / "wide.csv", title="Summary of run demo")
    assert list(zip(table["method"], table["stage"])) == [
        ("semples", "cam_t0.43"), ("semples", "crf"), ("semples", "segmenter"),
        ("clip_es", "cam_initial_alpha1"), ("clip_es", "cam_alpha1"), ("clip_es", "crf")]
    wide = pd.read_csv(tmp_path / "wide.csv")
    assert list(wide.columns) == ["stage", "split", "semples", "clip_es"]
    assert list(wide["stage"]) == ["cam_initial_alpha1", "cam_alpha1", "cam_t0.43", "crf", "segmenter"]
    assert wide.set_index("stage").loc["crf"].tolist() == ["train", "0.2000", "0.4000"]
    markdown = (tmp_path / "s.md").read_text()
    assert markdown.index("| cam_initial_alpha1 | train |") < markdown.index("| cam_t0.43 | train |") \
        < markdown.index("| crf | train |") < markdown.index("| segmenter | val |")


def test_the_summary_page_holds_every_table_as_html(tmp_path):
    rows = [{"method": "clip_es", "stage": "crf", "split": "train", "metric": "miou", "value": 0.7612},
            {"method": "clip_es", "stage": "crf", "split": "train", "metric": "fwiou", "value": 0.8}]
    write_metrics(tmp_path / "a.csv", rows)
    counts = {"train": {"images": 3, "used": 2, "skipped: no labels": 1, "skipped: bad files": 0}}
    summarize([tmp_path / "a.csv"], tmp_path / "s.csv", tmp_path / "s.md", split_images=counts,
              paper={"clip_es": {"crf/train": 0.75}}, skipped={"train": "`a<b` (no labels)"},
              html_path=tmp_path / "s.html", title="Summary of run demo")
    page = (tmp_path / "s.html").read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert "<h1>Summary of run demo</h1>" in page
    for title in ("mIoU by method", "All metrics", "Against the papers (mIoU)", "Images per split"):
        assert f"<h2>{title}</h2>" in page
    assert "<tr><td>crf</td><td>train</td><td>0.7612</td></tr>" in page.replace("\n", "")
    assert "<td>+0.0112</td>" in page and "<td>0.8000</td>" in page
    assert "<p>Skipped in train: <code>a&lt;b</code> (no labels)</p>" in page, "notes are escaped, code spans kept"
