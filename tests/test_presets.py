"""The real-data presets, resolved as Snakemake resolves them over config.yaml, run CLIP-ES as published."""

from __future__ import annotations

import copy

import pytest
import yaml
from snakemake.utils import update_config, validate

from tests.workflow_helpers import REPO
from wsss.method_kinds import resolve_methods
from wsss.workflow_support import check_instance_schemas

PRESETS = {"voc": 0.4, "coco": 0.7, "custom": 0.4}  # preset -> CLIP-ES box threshold
# config.yaml tunes the shared segmenter for the demo world's thin ResNet-18
DEMO_TUNED_SECTIONS = ("train", "predict")


def _load(path) -> dict:
    return yaml.safe_load(path.read_text())


def resolved(preset: str) -> dict:
    """config.yaml updated by configs/<preset>.yaml, as the Snakefile resolves them (methods replaced)."""
    config = copy.deepcopy(_load(REPO / "config.yaml"))
    own = _load(REPO / "configs" / f"{preset}.yaml")
    update_config(config, own)
    config["methods"] = copy.deepcopy(own["methods"])
    return config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_states_every_key_of_the_demo_tuned_segmenter(preset):
    demo, own = _load(REPO / "config.yaml"), _load(REPO / "configs" / f"{preset}.yaml")
    for section in DEMO_TUNED_SECTIONS:
        inherited = sorted(set(demo["segmenter"][section]) - set(own["segmenter"].get(section, {})))
        assert not inherited, f"configs/{preset}.yaml inherits the demo's segmenter.{section}.{inherited}"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_resolved_preset_is_valid_and_runs_clip_es_as_published(preset):
    config = resolved(preset)
    validate(config, str(REPO / "rules" / "schemas" / "config.schema.yaml"))
    check_instance_schemas(config["methods"], REPO / "rules" / "schemas" / "methods")
    assert config["clip"]["model"] == "ViT-B-16-quickgelu"  # OpenAI's weights: QuickGELU (issue: CAM stage)
    methods = resolve_methods(config["methods"])
    assert list(methods) == ["clip_es"], "a preset runs clip_es only, never the demo's ablations"
    method = methods["clip_es"]
    cam, caa = method["cam"], method["caa"]
    assert cam["input_scale"] == 1
    assert cam["attn_layers"] == [-8, None]
    assert cam["precision"] == "faithful" == _load(REPO / "configs" / f"{preset}.yaml")["methods"]["clip_es"]["cam"][
        "precision"], "the preset states its precision, and it is the official arithmetic"
    assert (cam["score"], cam["use_background"]) == ("softmax", True)
    assert (caa["power"], caa["sinkhorn_rounds"], caa["box_threshold"]) == (2, 3, PRESETS[preset])
    assert (caa["box_border"], caa["empty_box"]) == ("faithful", "zeros")
    assert method["pseudo_masks"]["crf"]["mode"] == "prob_unary" and method["segmenter"]
    seg = config["segmenter"]["train"]
    assert seg["backbone"] == "resnet101" and seg["width"] is None
    assert (seg["lr_mult"], seg["lr_step_every"]) == ([1, 10, 20], 10)


def test_demo_config_differs_where_the_presets_must_override_it():
    # keeps the tests above meaningful: were the demo's values CLIP-ES's, inheriting them would be harmless
    demo = _load(REPO / "config.yaml")
    demo_es = resolve_methods(demo["methods"])["clip_es"]
    assert demo_es["cam"]["input_scale"] != 1 and demo_es["caa"]["power"] != 2
    assert len(demo["methods"]) > 1
    assert demo["segmenter"]["train"]["width"] is not None


def test_clip_es_defaults_are_the_official_settings():
    from wsss.crf import CrfConfig
    from wsss.stages.pseudo_masks import recipe_threshold

    method = resolve_methods({"m": {"kind": "clip_es"}})["m"]
    assert method["cam"] == {"score": "softmax", "use_background": True, "attn_layers": [-8, None], "input_scale": 1,
                             "precision": "faithful", "batch_size": 1}
    assert recipe_threshold(method["pseudo_masks"]) == 0.95
    crf = CrfConfig.from_dict(method["pseudo_masks"]["crf"])
    assert (crf.image_mode, crf.params.bilateral_sxy, crf.params.bilateral_srgb) == ("wrapped_bgr_mean", 67, 3)
    # SemPLeS's label-unary CRF has no 255 rule unless a recipe sets a threshold
    assert recipe_threshold({"crf": {"mode": "label_unary"}, "confidence_threshold": None}) == 0.0


# SemPLeS presets: (lambda1, lambda2, lambda3), effective lr of stages a/b/c, AAF pooling, CAM scales, threshold
SEMPLES_PRESETS = {
    "voc": ((2.4, 0.02, 0.05), (6.4e-5, 0.025, 6.4e-5), ("max", 8), [1.0, 1.2], 0.43),
    "coco": ((0.75, 0.01, 0.2), (3.2e-7, 2.5e-3, 2.4e-7), ("avg", 4), [1.0, 0.8, 1.2], 0.42),
}


@pytest.mark.parametrize("dataset", sorted(SEMPLES_PRESETS))
def test_semples_preset_runs_beside_clip_es_with_the_release_settings(dataset):
    from wsss.methods.semples.train import Schedule

    config = resolved(dataset)
    extra = _load(REPO / "configs" / f"{dataset}_semples.yaml")
    update_config(config, extra)
    config["methods"] = {**config["methods"], **copy.deepcopy(extra["methods"])}
    validate(config, str(REPO / "rules" / "schemas" / "config.schema.yaml"))
    check_instance_schemas(config["methods"], REPO / "rules" / "schemas" / "methods")
    methods = resolve_methods(config["methods"])
    assert sorted(methods) == ["clip_es", "semples"]
    method = methods["semples"]
    lambdas, lrs, aaf, scales, threshold = SEMPLES_PRESETS[dataset]
    assert (method["match"]["lambda1"], method["prompts"]["lambda2"], method["refine"]["lambda3"]) == lambdas
    for stage, lr in zip(("match", "prompts", "refine"), lrs):
        assert Schedule.from_section(method[stage]).lr == pytest.approx(lr)
    assert (method["weaktr"]["aaf_pool"], method["weaktr"]["aaf_reduction"]) == aaf
    assert (method["weaktr"]["init"], method["weaktr"]["width"], method["weaktr"]["depth"]) == ("deit", 384, 12)
    assert method["cam"] == {"scales": scales, "flip": True}
    assert method["critic"]["model"] == "ViT-B-32-quickgelu" and method["prompts"]["length"] == 30
    crf = method["pseudo_masks"]["crf"]
    assert (crf["mode"], crf["bg_threshold"]) == ("label_unary", threshold)
    assert method["gt_select"] is False and method["prompts"]["enabled"]
    assert all(method[stage]["epochs"] == 60 for stage in ("phase1", "match", "prompts", "refine"))


@pytest.mark.parametrize("preset", ["voc", "coco"])
def test_papers_numbers_name_stages_and_splits_the_preset_scores(preset):
    config = resolved(preset)
    splits = config["splits"]
    scored = {**{f"{stage}/{split}": split for split in splits["cam_eval"]
                 for stage in ("cam_alpha1", "cam_alpha2", "crf")},
              **{f"{stage}/{splits['segmenter_eval']}": splits["segmenter_eval"]
                 for stage in ("segmenter", "segmenter_crf")}}
    paper = config["report"]["paper"]
    assert paper and set(paper) <= set(config["methods"])
    for method, reported in paper.items():
        assert set(reported) <= set(scored), f"{preset}: {sorted(set(reported) - set(scored))} is never scored"
        assert all(0 < value < 1 for value in reported.values())


def _excel_dry_run(tmp_path, dataset: str, descriptors: dict | None):
    """A dry run of configs/<dataset>.yaml + configs/<dataset>_excel.yaml on a fake layout: the split lists, a
    CLIP weight file and (unless None) a descriptor JSON, given by a third config file."""
    import hashlib
    import json
    import subprocess
    import sys

    from wsss.classes import load_class_lists

    lists = tmp_path / "lists"
    lists.mkdir()
    override: dict = {"clip": {"pretrained": str(tmp_path / "ViT-B-16.pt")}, "methods": {"excel": {"attributes": {}}}}
    (tmp_path / "ViT-B-16.pt").write_bytes(b"not loaded by a dry run")
    if dataset == "voc":
        for split in ("train", "val", "train_aug"):
            (lists / f"{split}.txt").write_text("".join(f"2007_{i:06d}\n" for i in range(7)))
        override["dataset"] = {"root": str(tmp_path / "VOC2012"), "split_lists": {"train_aug": str(lists / "train_aug.txt")}}
        root = tmp_path / "VOC2012" / "ImageSets" / "Segmentation"
        root.mkdir(parents=True)
        for split in ("train", "val"):
            (root / f"{split}.txt").write_text((lists / f"{split}.txt").read_text())
    else:
        for split in ("train", "val"):
            (lists / f"{split}.txt").write_text("".join(f"COCO_{split}2014_{i:012d} 0\n" for i in range(7)))
        override["dataset"] = {"split_lists": {split: str(lists / f"{split}.txt") for split in ("train", "val")}}
    if descriptors is not None:
        path = tmp_path / "descriptors.json"
        path.write_text(json.dumps(descriptors))
        override["methods"]["excel"]["attributes"] = {"descriptors": str(path),
                                                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    else:
        override["methods"]["excel"]["attributes"] = {"descriptors": str(tmp_path / "missing.json")}
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    classes = load_class_lists()[f"{dataset}_classes"]
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path / "run"),
               "--configfile", str(REPO / "configs" / f"{dataset}.yaml"), str(REPO / "configs" / f"{dataset}_excel.yaml"),
               str(tmp_path / "override.yaml"), "--workflow-profile", "none", "-n"]
    return subprocess.run(command, capture_output=True, text=True), classes


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_excel_preset_dry_runs_beside_clip_es(tmp_path, dataset):
    from wsss.classes import load_class_lists
    from tests.workflow_helpers import planned_jobs

    classes = load_class_lists()[f"{dataset}_classes"]
    result, _ = _excel_dry_run(tmp_path, dataset, {name: [f"it is a {name}."] for name in classes})
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = planned_jobs(result)
    # one bank, one CAM job per shard of the pseudo split (7 ids, one shard), and the shared tail for both kinds
    assert jobs["excel_attribute_bank"] == 1 and jobs["excel_cams"] == 1
    assert jobs["text_features"] == 2, "ExCEL's fp32 text features are not CLIP-ES's fp16 ones"
    assert jobs["clip_es_caa"] == 1 and jobs["crf"] == 2 and jobs["train_segmenter"] == 2
    extra = _load(REPO / "configs" / f"{dataset}_excel.yaml")
    method = resolve_methods(extra["methods"])["excel"]
    assert method["attributes"]["bank"]["n_clusters"] == {"voc": 112, "coco": 224}[dataset]
    assert method["caa"]["box_threshold"] == {"voc": 0.79, "coco": 0.88}[dataset]
    assert extra["report"]["paper"]["excel"] == {"crf/train": None}, "the training-free numbers are unknown"


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_a_missing_descriptor_file_stops_before_any_job_naming_the_key_and_its_sha256(tmp_path, dataset):
    result, _ = _excel_dry_run(tmp_path, dataset, None)
    assert result.returncode != 0
    expected = _load(REPO / "configs" / f"{dataset}_excel.yaml")["methods"]["excel"]["attributes"]["sha256"]
    output = result.stdout + result.stderr
    assert f"methods.excel.attributes.descriptors: {tmp_path / 'missing.json'} not found (sha256 {expected})" in output
    assert "Job stats" not in output
