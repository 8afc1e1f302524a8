"""Tests for the packaged CLIP-ES class, synonym and background lists (spec §4.1)."""

from importlib import resources

import pytest

from wsss.classes import get_class_list, load_class_lists


@pytest.fixture(scope="module")
def lists():
    return load_class_lists()


def test_yaml_is_package_data():
    assert resources.files("wsss.data").joinpath("class_lists.yaml").is_file()


def test_lengths(lists):
    assert len(lists["voc_classes"]) == 20
    assert len(lists["voc_synonyms"]) == 20
    assert len(lists["voc_bg"]) == 25
    assert len(lists["coco_classes"]) == 80
    assert len(lists["coco_synonyms"]) == 80
    assert len(lists["coco_synonyms_clean"]) == 80
    assert len(lists["coco_bg"]) == 23
    for name, values in lists.items():
        assert len(set(values)) == len(values), name
        assert all(isinstance(v, str) and v == v.strip() and v for v in values), name


def test_voc_strings(lists):
    assert lists["voc_classes"][0] == "aeroplane" and lists["voc_classes"][-1] == "tvmonitor"
    assert lists["voc_classes"][14] == "person"  # label value 15
    syn = lists["voc_synonyms"]
    assert syn[14] == "person with clothes,people,human"
    assert syn[2] == "bird avian" and syn[8] == "chair seat" and syn[19] == "tvmonitor screen"
    # synonyms only change the prompt text, never the class order
    changed = {i for i, (a, b) in enumerate(zip(lists["voc_classes"], syn)) if a != b}
    assert changed == {2, 8, 14, 19}
    assert lists["voc_bg"][:4] == ["ground", "land", "grass", "tree"]
    assert lists["voc_bg"][13] == "keyboard" and lists["voc_bg"][-1] == "sign"


def test_coco_strings(lists):
    cls, syn = lists["coco_classes"], lists["coco_synonyms"]
    assert cls[:5] == ["person", "bicycle", "car", "motorbike", "aeroplane"]
    assert cls[-1] == "toothbrush" and cls[78] == "hair drier" and cls[45] == "bowl"
    assert cls[49] == "orange" and cls[50] == "broccoli"  # the spec's example line "... 45 49 50"
    assert syn[31] == "sknowboard"  # the official misspelling, kept on purpose
    assert syn[0] == "person with clothes,people,human"
    assert syn[24] == "backpack,bag" and syn[25] == "umbrella,parasol" and syn[26] == "handbag,purse"
    assert syn[27] == "necktie" and syn[35] == "glove" and syn[44] == "dessertspoon"
    assert syn[65] == "remote control" and syn[78] == "hairdrier,blowdrier"
    clean = lists["coco_synonyms_clean"]
    assert clean[31] == "snowboard"
    assert [i for i, (a, b) in enumerate(zip(syn, clean)) if a != b] == [31]


def test_coco_bg_is_voc_bg_minus_coco_classes(lists):
    assert lists["coco_bg"] == [w for w in lists["voc_bg"] if w not in ("keyboard", "sign")]
    assert "keyboard" in lists["coco_classes"]


def test_get_class_list():
    assert get_class_list("voc_bg")[6] == "sky"
    with pytest.raises(ValueError, match="voc_synonyms"):
        get_class_list("voc_synonym")
