"""ExCEL's training-free pieces: the surgery forward (SVC), feature surgery, the attribute bank and enrichment
(TSE), the CAA layer mix, and PAR."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_gradcam import TINY as TINY_GRADCAM_CLIP  # the same tiny ViT as the GradCAM tests
from wsss.clip.factory import build_clip
from wsss.clip.transformer import attention_parts, encode_image_tokens
from wsss.methods.excel.attributes import (
    dropped_count,
    enrich_class_text,
    kmeans,
    owner_flags,
    read_descriptors,
)
from wsss.methods.excel.cams import excel_maps, input_shape
from wsss.methods.excel.similarity import feature_surgery, normalise_features, token_minmax
from wsss.methods.excel.surgery import layer_mix, self_correlation, surgery_forward
from wsss.par import ParConfig, par_affinity, par_refine

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_clip(copy.deepcopy(TINY_GRADCAM_CLIP)).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


# --- SVC: the surgery forward ------------------------------------------------------------------------


def test_self_correlation_is_the_mean_of_three_softmaxes_summed_over_heads():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 5, 8, generator=g) for _ in range(3))
    scale = 8 ** -0.5
    expected = torch.zeros(5, 5)
    for h in range(4):
        for x in (q[h], k[h], v[h]):
            expected += torch.softmax(scale * x @ x.t(), dim=-1) / 3
    assert torch.allclose(self_correlation(q, k, v, scale, "sum"), expected, atol=1e-6)
    assert torch.allclose(self_correlation(q, k, v, scale, "mean"), expected / 4, atol=1e-6)
    assert torch.allclose(expected.sum(dim=1), torch.full((5,), 4.0)), "rows sum to the number of heads"


def test_the_head_sum_path_is_heads_times_the_head_mean_path_plus_the_output_bias(model, images):
    block = model.visual.transformer.resblocks[-1]
    tokens, _ = encode_image_tokens(model, images[:1], upto_block=2)
    parts = attention_parts(block.attn, block.ln_1(tokens[0]))
    values = parts.v.transpose(0, 1).reshape(tokens.shape[1:])
    weight, bias = block.attn.out_proj.weight, block.attn.out_proj.bias
    summed = F.linear(self_correlation(parts.q, parts.k, parts.v, parts.scale, "sum") @ values, weight, bias)
    mean = F.linear(self_correlation(parts.q, parts.k, parts.v, parts.scale, "mean") @ values, weight)
    assert torch.allclose(summed, block.attn.num_heads * mean + bias, atol=1e-5)


def test_without_surgery_blocks_the_forward_is_plain_clip_and_the_cls_token_is_always_plain(model, images):
    plain = model.encode_image(images)  # open_clip's own forward: proj(ln_post(CLS))
    none = surgery_forward(model, images, surgery_blocks=0, attention_blocks=3)
    assert torch.allclose(none.features[:, 0], plain, atol=1e-5)
    two = surgery_forward(model, images, surgery_blocks=2, attention_blocks=3)
    assert torch.allclose(two.features[:, 0], plain, atol=1e-5), "the CLS token comes from the original path"
    assert not torch.allclose(two.features[:, 1:], none.features[:, 1:], atol=1e-3)
    assert (two.first_surgery_block, two.first_attention_block, len(two.attention)) == (1, 0, 3)


def test_the_new_path_starts_at_the_first_surgery_block_and_has_no_mlp(model, images):
    out = surgery_forward(model, images[:1], surgery_blocks=1, attention_blocks=1)
    block = model.visual.transformer.resblocks[-1]
    tokens, _ = encode_image_tokens(model, images[:1], upto_block=2)
    parts = attention_parts(block.attn, block.ln_1(tokens[0]))
    values = parts.v.transpose(0, 1).reshape(tokens.shape[1:])
    correlation = self_correlation(parts.q, parts.k, parts.v, parts.scale, "sum")
    new = tokens[0] + F.linear(correlation @ values, block.attn.out_proj.weight, block.attn.out_proj.bias)
    expected = model.visual.ln_post(new) @ model.visual.proj
    assert torch.allclose(out.features[0, 1:], expected[1:], atol=1e-5)
    assert torch.allclose(out.attention[0][0], parts.probs.mean(0), atol=1e-6), "head-mean q-k attention"


def test_keep_aspect_keeps_the_images_shape_at_about_the_squares_pixel_count():
    square, kept = {"input_size": 320, "resize": "square"}, {"input_size": 320, "resize": "keep_aspect"}
    assert input_shape(375, 500, square, 16) == (320, 320)  # the reference: the aspect ratio is lost
    assert input_shape(375, 500, kept, 16) == (272, 368)  # 17 x 23 = 391 patches against the square's 400
    assert input_shape(500, 375, kept, 16) == (368, 272)
    assert input_shape(8, 4000, kept, 16) == (16, 7152)  # never below one patch


def test_the_maps_of_a_non_square_input_lie_on_its_own_patch_grid(model):
    from wsss.methods.excel import DEFAULTS

    cam = {**DEFAULTS["cam"], "surgery_blocks": 2}
    caa = {**DEFAULTS["caa"], "attn_layers": [-2, None]}
    text = F.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    tensor = torch.randn(3, 32, 80, generator=torch.Generator().manual_seed(2))
    out = excel_maps(model, tensor, text, np.array([0, 2]), cam, caa)
    assert out["cam"].shape == out["cam_initial"].shape == (2, 2, 5)
    assert 0 <= out["cam_initial"].min() and out["cam_initial"].max() <= 1


def test_the_caa_mixes_plain_head_means_with_head_summed_surgery_maps():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(1, 5, 5, generator=g) for _ in range(3)]
    summed = layer_mix(maps, first_attention_block=9, first_surgery_block=10, heads=12)
    assert torch.allclose(summed, ((maps[0] + 12 * maps[1] + 12 * maps[2]) / 3)[:, 1:, 1:])
    mean = layer_mix(maps, first_attention_block=9, first_surgery_block=10, heads=12, surgery_head_reduce="mean")
    assert torch.allclose(mean, ((maps[0] + maps[1] + maps[2]) / 3)[:, 1:, 1:])


# --- feature surgery -----------------------------------------------------------------------------------


def test_feature_surgery_equals_the_element_wise_formula():
    g = torch.Generator().manual_seed(0)
    raw, text = torch.randn(17, 8, generator=g), F.normalize(torch.randn(5, 8, generator=g), dim=1)
    x = normalise_features(raw, "tokens")
    assert torch.allclose(x.norm(dim=0), torch.ones(8)), "each channel has unit norm over the tokens"
    assert torch.allclose(normalise_features(raw, "channels").norm(dim=1), torch.ones(17))
    # the reference's layout: a (tokens, texts, channels) product, weighted, minus its mean over the texts
    product = x[:, None, :] * text[None, :, :]
    p = torch.softmax(2 * (x[0] @ text.t()), dim=0)
    weighted = product * (p / p.mean())[None, :, None]
    expected = (weighted - weighted.mean(dim=1, keepdim=True)).sum(dim=-1)
    assert torch.allclose(feature_surgery(x, text), expected, atol=1e-5)


def test_token_minmax_includes_the_cls_token_and_zeroes_a_constant_column():
    scores = torch.tensor([[10.0, 1.0], [0.0, 1.0], [5.0, 1.0]])  # row 0 is the CLS token
    maps, constant = token_minmax(scores)
    assert maps[:, 0].tolist() == [1.0, 0.0, 0.5] and maps[1:, 0].max() < 1, "the CLS row holds the maximum"
    assert maps[:, 1].tolist() == [0.0, 0.0, 0.0] and constant == 1


# --- TSE: the attribute bank and the enrichment ---------------------------------------------------------


def test_the_drop_count_follows_the_reference():
    assert dropped_count(112, 0.9) == 11 and dropped_count(224, 0.9) == 22 and dropped_count(18, 0.9) == 1
    assert dropped_count(10, 1.0) == 0


def test_enrichment_is_a_softmax_over_the_kept_attributes_and_lambda_zero_is_the_identity():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    bank = 0.97 * F.normalize(torch.randn(20, 8, generator=g), dim=1)
    enriched = enrich_class_text(text, bank, keep_fraction=0.9, temperature=1.0, weight=1.0)
    assert torch.allclose(enriched.norm(dim=1), torch.ones(3))
    for c in range(3):
        scores = text[c] @ bank.t()
        kept = scores.argsort(descending=True)[:18]  # 20 - int(0.1 * 20)
        weights = torch.softmax(scores[kept], dim=0)
        assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6)
        expected = F.normalize(text[c] + weights @ bank[kept], dim=0)
        assert torch.allclose(enriched[c], expected, atol=1e-6)
    assert torch.allclose(enrich_class_text(text, bank, weight=0.0), text, atol=1e-6)
    sharper = enrich_class_text(text, bank, temperature=0.01)
    assert not torch.allclose(sharper, enriched, atol=1e-3), "the temperature sharpens the weights"


def _toy_sentences(rng, classes=("cat", "dog", "cow"), per_class=6, dim=16):
    """Sentence embeddings dominated by their class prefix, as CLIP's are: a class direction plus noise."""
    directions = rng.normal(size=(len(classes), dim))
    points = np.concatenate([directions[c] + 0.15 * rng.normal(size=(per_class, dim)) for c in range(len(classes))])
    return points / np.linalg.norm(points, axis=1, keepdims=True), np.repeat(np.arange(len(classes)), per_class)


def test_the_bank_is_deterministic_and_every_cluster_belongs_to_one_class():
    points, sentence_class = _toy_sentences(np.random.default_rng(0))
    centres, labels = kmeans(points, k=6, seed=0, n_init=10)
    again, labels_again = kmeans(points, k=6, seed=0, n_init=10)
    assert np.array_equal(centres, again) and np.array_equal(labels, labels_again)
    flags = owner_flags(labels, sentence_class, n_classes=3, k=6)
    assert flags.sum(axis=0).tolist() == [1] * 6, "each cluster has sentences of exactly one class"
    assert flags.sum(axis=1).min() >= 1
    assert np.allclose(centres, np.stack([points[labels == j].mean(axis=0) for j in range(6)])), "means, not renormalised"
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(points, k=19)


def test_descriptors_are_checked_against_the_classes_and_clips_context(tmp_path):
    path = tmp_path / "descriptors.json"
    path.write_text(json.dumps({"cat": ["It has WHISKERS."], "dog": ["it barks.", "it has a tail."]}))
    count = lambda sentence: len(sentence.split()) + 2  # noqa: E731 (a stand-in tokenizer: words + SOT + EOT)
    read = read_descriptors(path, ["cat", "dog"], count, prefix="a clean origami {}. ")
    assert read == {"cat": ["a clean origami cat. it has whiskers."],
                    "dog": ["a clean origami dog. it barks.", "a clean origami dog. it has a tail."]}
    with pytest.raises(ValueError, match=r"descriptors.json: no descriptors for the classes \['cow'\]"):
        read_descriptors(path, ["cat", "dog", "cow"], count)
    path.write_text(json.dumps({"cat": [], "dog": ["x"]}))
    with pytest.raises(ValueError, match="class 'cat' needs a non-empty list"):
        read_descriptors(path, ["cat", "dog"], count)
    path.write_text(json.dumps({"cat": ["word " * 80], "dog": ["x"]}))
    with pytest.raises(ValueError, match="longer than CLIP's 77 tokens"):
        read_descriptors(path, ["cat", "dog"], count)


# --- PAR -------------------------------------------------------------------------------------------------


def test_par_weights_sum_to_one_plus_the_position_weight_so_a_constant_map_only_gains():
    config = ParConfig(iterations=5)
    image = torch.full((3, 30, 30), 0.4)
    affinity = par_affinity(image, config)
    assert affinity.shape == (48, 30, 30)
    assert torch.allclose(affinity.sum(dim=0), torch.full((30, 30), 1 + config.w_pos), atol=1e-5)
    maps = torch.full((2, 30, 30), 0.5)
    assert torch.allclose(par_refine(maps, image, config), maps * (1 + config.w_pos) ** 5, atol=1e-5)


def test_par_propagates_within_a_region_and_stops_at_an_edge():
    config = ParConfig(iterations=10)
    flat = torch.full((3, 40, 40), 0.5)
    edged = flat.clone()
    edged[:, :, 20:] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]  # a colour edge between columns 19 and 20
    maps = torch.zeros(1, 40, 40)
    maps[0, :, 14:20] = 1.0  # activation up to the edge, on its left
    spread = par_refine(maps, flat, config)[0]
    stopped = par_refine(maps, edged, config)[0]
    # on a flat image the activation spreads across column 20 as freely as within its own side
    assert spread[:, 20:26].mean() > 0.8 * spread[:, 14:20].mean() > 0
    # across the colour edge almost nothing arrives, while the left side keeps its activation
    assert stopped[:, 20:26].mean() < 0.01 * stopped[:, 14:20].mean()
    assert stopped[:, :20].mean() > spread[:, :20].mean(), "what cannot cross the edge stays on its side"


def test_the_par_stage_labels_each_pixel_by_the_refined_argmax_with_its_share_as_confidence():
    from wsss.stages.par import par_image, par_labels

    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :16] = (200, 40, 40)  # a red object on the left, black background on the right
    original = par_image(rgb, "original", 32)
    assert original.shape == (3, 24, 32) and float(original[0, 0, 0]) == 200.0
    resized = par_image(rgb, "resized_input", 16)
    assert resized.shape == (3, 24, 32) and float(resized[0, 0, 0]) < 10, "ImageNet-normalised, then resized back"
    cams = np.zeros((1, 6, 8), np.float32)
    cams[0, :, :4] = 1.0  # the labelled class (index 4) fills the left half
    labels, confidence = par_labels(cams, np.array([4]), original, ParConfig(iterations=5))
    assert labels.dtype == np.uint8 and confidence.dtype == np.float16 and labels.shape == (24, 32)
    assert (labels[:, :12] == 5).all() and (labels[:, 20:] == 0).all(), "class k is label k + 1, background 0"
    assert 0.5 <= float(confidence.min()) and float(confidence.max()) <= 1.0
