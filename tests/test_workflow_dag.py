"""The DAG as Snakemake sees it: dry runs, config validation, shard counts (fast, no job runs)."""

import pytest
import yaml

from tests.workflow_helpers import REPO, planned_jobs, snakemake, write_config

ALL_RULES = {"generate_demo_world", "manifest", "train_demo_clip", "text_features", "cams", "caa", "evaluate_cams",
             "crf", "export_pseudo_masks", "evaluate_pseudo_masks", "train_segmenter", "predict",
             "evaluate_segmenter", "summary", "all"}


def test_default_config_dry_run_lists_the_whole_dag(tmp_path):
    result = snakemake(tmp_path, "-n", config=REPO / "config.yaml")
    jobs = planned_jobs(result)
    assert set(jobs) == ALL_RULES
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    n_shards = -(-demo["demo_world"]["n_train"] // demo["shard_size"])
    assert jobs["cams"] == jobs["caa"] == jobs["crf"] == n_shards
    assert jobs["predict"] == -(-demo["demo_world"]["n_val"] // demo["shard_size"])
    assert jobs["manifest"] == 2


def test_prompt_ranking_joins_the_dag_only_for_auto_template(tmp_path):
    config = write_config(tmp_path / "auto.yaml", text={"template": "auto"})
    assert planned_jobs(snakemake(tmp_path, "-n", config=config)).get("select_prompt") == 1
    assert "select_prompt" not in planned_jobs(snakemake(tmp_path, "-n"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"crf": {"itrs": 5}}, "itrs"),
        ({"caa": {"box_border": "sideways"}}, "sideways"),
        ({"shard_size": 0}, "shard_size"),
        ({"clip": {"model": "ViT-B-16", "pretrained": None}}, "clip.pretrained"),
        ({"text": {"template": "no placeholder"}}, "text.template"),
        ({"splits": {"pseudo": "train_aug"}}, "splits.pseudo"),
        ({"dataset": {"kind": "voc"}}, "dataset.root"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path, changes, message):
    config = write_config(tmp_path / "bad.yaml", **changes)
    result = snakemake(tmp_path, "-n", config=config, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
