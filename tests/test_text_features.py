"""Tests for wsss.clip.text_features (prompt embeddings) and wsss.clip.prompt_selection (sharpness ranking)."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from wsss.clip.factory import build_clip
from wsss.clip.prompt_selection import class_probabilities, image_embeddings, rank_templates, sharpness
from wsss.clip.text_features import DEFAULT_TEMPLATE, get_tokenizer, text_features

TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_clip(copy.deepcopy(TINY)).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("ViT-B-16")


def test_tokenizer_is_openai_bpe(tok):
    ids = tok(["a clean origami cat."])
    assert ids.shape == (1, 77)
    assert ids[0, 0].item() == 49406  # start of text
    n = int((ids[0] != 0).sum())
    assert ids[0, n - 1].item() == 49407  # end of text
    # "a", "clean", "origami", "cat", "." -> at least 5 tokens between the markers
    assert n >= 7


def test_features_are_unit_norm(model, tok):
    names = ["cat", "person with clothes,people,human", "sky"]
    f = text_features(model, tok, names)
    assert f.shape == (3, 32) and f.dtype == torch.float32
    assert torch.allclose(f.norm(dim=-1), torch.ones(3), atol=1e-6)
    f2 = text_features(model, tok, names, ["a photo of a {}.", "a rendering of a weird {}."])
    assert torch.allclose(f2.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_single_template_equals_direct_formula(model, tok):
    names = ["dog", "person with clothes,people,human"]
    f = text_features(model, tok, names, [DEFAULT_TEMPLATE])
    with torch.no_grad():
        direct = model.encode_text(tok(["a clean origami dog.", "a clean origami person with clothes,people,human."]))
    assert torch.allclose(f, F.normalize(direct, dim=-1), atol=1e-6)
    # synonyms are one prompt, not an average of "person", "people", "human"
    with torch.no_grad():
        parts = F.normalize(
            model.encode_text(tok([DEFAULT_TEMPLATE.format(w) for w in ("person", "people", "human")])), dim=-1
        )
    assert not torch.allclose(f[1], F.normalize(parts.mean(0), dim=-1), atol=1e-3)


def test_template_average(model, tok):
    templates = ["a clean origami {}.", "a photo of a {}.", "{}"]
    f = text_features(model, tok, ["bus", "train"], templates, batch_size=2)  # chunking across names
    with torch.no_grad():
        per = F.normalize(model.encode_text(tok([t.format("train") for t in templates])), dim=-1)
    assert torch.allclose(f[1], F.normalize(per.mean(0), dim=-1), atol=1e-6)
    assert torch.allclose(f, text_features(model, tok, ["bus", "train"], templates), atol=1e-6)
    with pytest.raises(ValueError, match="templates"):
        text_features(model, tok, ["bus"], ["no placeholder"])
    with pytest.raises(ValueError, match="names"):
        text_features(model, tok, [], templates)


def test_sharpness_hand_made():
    scores = np.array(
        [
            [0.5, 0.3, 0.2],  # targets 0, 1: var = 0.01, mean = 0.4 -> 0.025
            [0.1, 0.1, 0.8],  # single label: skipped
            [0.2, 0.2, 0.6],  # targets 0, 1, 2: mean 1/3, var = (2*(2/15)^2 + (4/15)^2)/3 = 8/225
        ]
    )
    labels = [np.array([0, 1]), np.array([2]), [0, 1, 2]]
    expect = 0.025 + (8 / 225) / (1 / 3)
    assert sharpness(scores, labels) == pytest.approx(expect, rel=1e-12)
    # equal target scores have zero spread
    assert sharpness(np.array([[0.4, 0.4, 0.2]]), [[0, 1]]) == 0.0
    with pytest.raises(ValueError, match="outside"):
        sharpness(scores, [[0, 3], [1], [0]])
    with pytest.raises(ValueError, match="label arrays"):
        sharpness(scores, [[0, 1]])


def test_rank_templates(model, tok):
    g = torch.Generator().manual_seed(0)
    images = [
        torch.randn(3, 32, 48, generator=g),
        torch.randn(3, 64, 64, generator=g),
        torch.randn(3, 48, 32, generator=g),
    ]
    labels = [[0, 1], [2], [0, 2]]
    names = ["cat", "dog", "bird"]
    templates = ["a clean origami {}.", "a photo of a {}.", "a rendering of a weird {}."]
    df = rank_templates(model, tok, images, labels, names, ["sky", "grass"], templates)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["template", "sharpness", "n_images", "rank"]
    assert sorted(df["template"]) == sorted(templates)
    assert (df["n_images"] == 2).all()
    assert df["sharpness"].is_monotonic_increasing and df["rank"].tolist() == [1, 2, 3]
    # each row's sharpness is the measure on softmax(100-scaled cos) over fg + bg prompts
    img = image_embeddings(model, images)
    t = df["template"].iloc[0]
    text = torch.cat([text_features(model, tok, names, [t]), text_features(model, tok, ["sky", "grass"], [t])])
    probs = class_probabilities(model, img, text).numpy()
    assert df["sharpness"].iloc[0] == pytest.approx(sharpness(probs, labels))
    rev = rank_templates(model, tok, images, labels, names, None, templates, lower_is_better=False)
    assert rev["sharpness"].is_monotonic_decreasing and rev["rank"].iloc[0] == 1


def test_image_embeddings_pooling(model):
    img = torch.randn(3, 64, 64)
    cls = image_embeddings(model, [img], pooling="cls")
    with torch.no_grad():
        ref = F.normalize(model.encode_image(img[None]), dim=-1)
    assert torch.allclose(cls, ref, atol=1e-5)
    mean = image_embeddings(model, [img], pooling="patch_mean")
    assert mean.shape == (1, 32) and not torch.allclose(mean, cls, atol=1e-3)
    with pytest.raises(ValueError, match="pooling"):
        image_embeddings(model, [img], pooling="max")
