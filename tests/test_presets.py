"""The real-data presets, merged over config.yaml as Snakemake merges them, keep CLIP-ES's settings."""

from __future__ import annotations

import copy

import pytest
import yaml
from snakemake.utils import update_config, validate

from tests.workflow_helpers import REPO

PRESETS = {"voc": 0.4, "coco": 0.7, "custom": 0.4}  # preset -> CLIP-ES box threshold
# config.yaml tunes these sections for the demo world's tiny CLIP and thin segmenter
DEMO_TUNED_SECTIONS = ("cam", "caa", "segmenter")


def _load(path) -> dict:
    return yaml.safe_load(path.read_text())


def resolved(preset: str) -> dict:
    """config.yaml updated by configs/<preset>.yaml, as `configfile:` plus `--configfile` resolve them."""
    config = copy.deepcopy(_load(REPO / "config.yaml"))
    update_config(config, _load(REPO / "configs" / f"{preset}.yaml"))
    return config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_states_every_key_of_the_demo_tuned_sections(preset):
    demo, own = _load(REPO / "config.yaml"), _load(REPO / "configs" / f"{preset}.yaml")
    for section in DEMO_TUNED_SECTIONS:
        inherited = sorted(set(demo[section]) - set(own.get(section, {})))
        assert not inherited, f"configs/{preset}.yaml inherits the demo's {section}.{inherited}"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_resolved_preset_is_valid_and_keeps_clip_es_settings(preset):
    config = resolved(preset)
    validate(config, str(REPO / "rules" / "schemas" / "config.schema.yaml"))
    cam, caa, seg = config["cam"], config["caa"], config["segmenter"]
    assert config["clip"]["model"] == "ViT-B-16"
    assert cam["input_scale"] == 1
    assert cam["attn_layers"] == [-8, None]
    assert (cam["score"], cam["use_background"]) == ("softmax", True)
    assert (caa["power"], caa["sinkhorn_rounds"], caa["box_threshold"]) == (2, 3, PRESETS[preset])
    assert (caa["box_border"], caa["empty_box"]) == ("faithful", "zeros")
    assert seg["backbone"] == "resnet101" and seg["width"] is None
    assert (seg["lr_mult"], seg["lr_step_every"]) == ([1, 10, 20], 10)


def test_demo_config_differs_where_the_presets_must_override_it():
    # keeps the test above meaningful: were the demo's values CLIP-ES's, inheriting them would be harmless
    demo = _load(REPO / "config.yaml")
    assert demo["cam"]["input_scale"] != 1
    assert demo["segmenter"]["width"] is not None
