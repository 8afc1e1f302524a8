"""Tests for the WeakTr mask generator (wsss.methods.semples.weaktr), on tiny CPU configs."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from wsss.classes import load_class_lists
from wsss.digests import file_digest
from wsss.method_kinds import resolve_methods
from wsss.methods.semples import class_tokens
from wsss.methods.semples.class_names import COCO, COCO_CLASS_SLOTS, COCO_SLOTS, VOC
from wsss.methods.semples.weaktr import (
    AdaptiveAttentionFusion,
    WeakTr,
    WeakTrConfig,
    class_maps,
    deit_state_dict_for,
    interpolate_patch_pos_embed,
    is_backbone_key,
    load_deit,
    load_weaktr_checkpoint,
    phase1_loss,
    token_labels,
    split_heads_interleaved,
    stack_head_major,
    trainable_parameters,
)

TINY = dict(image_size=32, patch_size=8, width=32, depth=2, heads=4, aaf_reduction=4, aaf_hidden=4)


def tiny_config(num_classes: int = 3, **overrides) -> WeakTrConfig:
    """A 2-block, width-32 WeakTr on a 4x4 stored grid."""
    return WeakTrConfig(num_classes=num_classes, **{**TINY, **overrides})


def tiny_timm_vit() -> VisionTransformer:
    """A timm ViT with the same backbone shapes as `tiny_config`."""
    torch.manual_seed(1)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)


def backbone_params(model: WeakTr) -> dict[str, torch.nn.Parameter]:
    """Named backbone parameters (everything but the conv head and the AAF)."""
    return {name: p for name, p in model.named_parameters() if is_backbone_key(name)}


def head_params(model: WeakTr) -> dict[str, torch.nn.Parameter]:
    """Named conv-head and AAF parameters."""
    return {name: p for name, p in model.named_parameters() if not is_backbone_key(name)}


# --- config -----------------------------------------------------------------------------------------------


def test_config_defaults_are_deit_small_voc():
    config = WeakTrConfig(num_classes=20)
    assert (config.width, config.depth, config.heads, config.head_dim, config.grid) == (384, 12, 6, 64, 14)
    assert (config.attention_maps, config.aaf_pool, config.aaf_reduction, config.aaf_hidden) == (72, "max", 8, 8)
    assert config.final_norm is False


@pytest.mark.parametrize("overrides, key", [
    (dict(width=30), "weaktr.width"),
    (dict(aaf_pool="mean"), "weaktr.aaf_pool"),
    (dict(depth=0), "weaktr.depth"),
    (dict(heads=2.0), "weaktr.heads"),
    (dict(num_classes=True), "weaktr.num_classes"),
    (dict(aaf_reduction=3), "weaktr.aaf_reduction"),
    (dict(image_size=36), "weaktr.image_size"),
    (dict(drop_path=1.0), "weaktr.drop_path"),
    (dict(mlp_ratio=0), "weaktr.mlp_ratio"),
    (dict(final_norm="no"), "weaktr.final_norm"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        tiny_config(**overrides)


def test_from_dict_rejects_unknown_and_missing_keys():
    assert WeakTrConfig.from_dict({"num_classes": 3, **TINY}) == tiny_config()
    with pytest.raises(ValueError, match=r"weaktr: unknown key\(s\) \['widht'\]"):
        WeakTrConfig.from_dict({"num_classes": 3, "widht": 32})
    with pytest.raises(ValueError, match="weaktr.num_classes: required"):
        WeakTrConfig.from_dict({"width": 32})


# --- pure functions -----------------------------------------------------------------------------------------


def test_split_heads_interleaved_puts_channel_c_into_head_c_mod_heads():
    heads, width = 4, 12
    features = torch.arange(width, dtype=torch.float32).expand(2, 5, width)  # value = channel index
    split = split_heads_interleaved(features, heads)
    assert split.shape == (2, heads, 5, width // heads)
    for head in range(heads):
        channels = split[:, head].flatten().long().unique().tolist()
        assert channels == [c for c in range(width) if c % heads == head]
        assert split[0, head, 0].tolist() == [float(j * heads + head) for j in range(width // heads)]
    with pytest.raises(ValueError):
        split_heads_interleaved(features, 5)


def test_stack_head_major_order():
    layers, heads = 3, 2
    per_layer = [torch.tensor([[10.0 * layer + head for head in range(heads)]]) for layer in range(layers)]
    stacked = stack_head_major(per_layer)
    assert stacked.shape == (1, layers * heads)
    assert stacked[0].tolist() == [10.0 * layer + head for head in range(heads) for layer in range(layers)]


def test_pos_embed_interpolation():
    pos = torch.randn(1, 16, 8)
    assert interpolate_patch_pos_embed(pos, (4, 4)) is pos  # stored grid: identity
    assert interpolate_patch_pos_embed(pos, (6, 3)).shape == (1, 18, 8)
    assert interpolate_patch_pos_embed(pos, (7, 7)).shape == (1, 49, 8)
    same_count = interpolate_patch_pos_embed(pos, (2, 8))  # N0 patches, but not the stored square grid
    assert same_count.shape == (1, 16, 8) and not torch.allclose(same_count, pos)
    model = WeakTr(tiny_config(num_classes=3))
    assert torch.equal(model.position_embedding((4, 4)), model.pos_embed)
    assert model.position_embedding((5, 4)).shape == (1, 3 + 20, 32)


# --- model ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 3, 20])
@pytest.mark.parametrize("size, grid", [((32, 32), (4, 4)), ((44, 37), (5, 4))])
def test_output_shapes(num_classes, size, grid):
    torch.manual_seed(0)
    model = WeakTr(tiny_config(num_classes)).eval()
    out = model(torch.randn(2, 3, *size))
    c, (h, w) = num_classes, grid
    assert out.class_logits.shape == out.coarse_logits.shape == out.fine_logits.shape == (2, c)
    assert out.coarse_cam.shape == out.cams.shape == out.fine_cam.shape == (2, c, h, w)
    assert out.patch_attn.shape == (2, h * w, h * w)
    assert (out.coarse_cam >= 0).all()
    assert torch.allclose(out.fine_logits, out.fine_cam.mean(dim=(2, 3)))
    tokens, maps, features, got_grid = model.encode(torch.randn(2, 3, *size))
    t = c + h * w
    assert got_grid == grid and tokens.shape == (2, t, 32)
    assert maps.shape == (2, 8, t, t) and features.shape == (2, 8, t, 8)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 8, t), atol=1e-5)  # softmax rows


def test_aaf_shapes_weights_and_pooling():
    torch.manual_seed(0)
    attn, features = torch.rand(2, 8, 6, 6), torch.randn(2, 8, 6, 4)
    aaf_max = AdaptiveAttentionFusion(8, 4, hidden=4, reduction=4, pool="max")
    aaf_avg = AdaptiveAttentionFusion(8, 4, hidden=4, reduction=4, pool="avg")
    aaf_avg.load_state_dict(aaf_max.state_dict())
    weights = aaf_max.weights(features)
    assert weights.shape == (2, 8) and ((weights > 0) & (weights < 1)).all()
    fused = aaf_max(attn, features)
    assert fused.shape == (2, 6, 6)
    assert torch.allclose(fused, (attn * weights[..., None, None]).mean(1), atol=1e-6)
    assert not torch.allclose(aaf_avg.weights(features), weights)
    assert [name for name, _ in aaf_max.named_parameters()] == [
        "attn_feat_ffn.0.weight", "attn_feat_ffn.0.bias", "attn_feat_ffn.1.weight", "attn_feat_ffn.1.bias",
        "attn_head_ffn.0.weight", "attn_head_ffn.2.weight"]


def test_detached_backbone_gets_no_gradient():
    torch.manual_seed(0)
    # r = 2 gives the AAF gate 4 hidden ReLUs; with r = 4 (2 units) a seed can leave them all dead, and a
    # dead gate passes no gradient to the AAF at all
    model = WeakTr(tiny_config(3, aaf_reduction=2), detach_backbone=True).train()
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    phase1_loss(model(torch.randn(2, 3, 32, 32)), labels).backward()
    assert all(p.grad is None for p in backbone_params(model).values())
    for name, p in head_params(model).items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # a fine-CAM loss alone (what stages a/c use) reaches the conv head through the fused CAM
    model.zero_grad(set_to_none=True)
    model(torch.randn(2, 3, 40, 32)).fine_cam.sum().backward()
    assert all(p.grad is None for p in backbone_params(model).values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head_params(model).values())


def test_phase1_backbone_learns_and_fused_cam_uses_detached_head():
    torch.manual_seed(0)
    model = WeakTr(tiny_config(3, final_norm=True), detach_backbone=False).train()
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    loss = phase1_loss(model(torch.randn(2, 3, 32, 32)), labels)
    assert loss.ndim == 0
    loss.backward()
    for name, p in backbone_params(model).items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the fine CAM trains the AAF only: the head output is detached in the fused CAM, the AAF inputs always
    model.zero_grad(set_to_none=True)
    model(torch.randn(2, 3, 32, 32)).fine_cam.sum().backward()
    assert all(p.grad is None for name, p in model.named_parameters()
               if not name.startswith("adaptive_attention_fusion."))
    assert all(p.grad is not None for p in model.adaptive_attention_fusion.parameters())


def test_trainable_parameters():
    model = WeakTr(tiny_config(3))
    assert len(trainable_parameters(model, "phase1")) == len(list(model.parameters()))
    for stage in ("match", "refine"):
        ids = {id(p) for p in trainable_parameters(model, stage)}
        assert ids == {id(p) for p in head_params(model).values()}
    with pytest.raises(ValueError, match="unknown stage"):
        trainable_parameters(model, "b")


# --- DeiT loading and agreement with timm -------------------------------------------------------------------------


def test_load_deit_repeats_class_token_and_copies_blocks(tmp_path):
    vit = tiny_timm_vit()
    deit = vit.state_dict()
    path = tmp_path / "deit.pth"
    torch.save({"model": deit}, path)
    model = WeakTr(tiny_config(3))
    head_before = model.head.weight.clone()
    left = load_deit(model, path, sha256=file_digest(path)[:12])
    assert sorted(left) == sorted(head_params(model))
    assert torch.equal(model.cls_token, deit["cls_token"].repeat(1, 3, 1))
    assert torch.equal(model.pos_embed[:, :3], deit["pos_embed"][:, :1].repeat(1, 3, 1))
    assert torch.equal(model.pos_embed[:, 3:], deit["pos_embed"][:, 1:])
    for key, value in model.state_dict().items():
        if key not in ("cls_token", "pos_embed") and is_backbone_key(key):
            assert torch.equal(value, deit[key]), key
    assert torch.equal(model.head.weight, head_before)  # conv head left at its init
    # the conversion also works from a config (shapes from a meta-device model)
    converted = deit_state_dict_for(tiny_config(3), {"model": deit})
    assert set(converted) == set(backbone_params(model))
    with pytest.raises(ValueError, match=f"sha256 mismatch for {path}"):
        load_deit(model, path, sha256="00000000")


def test_load_deit_errors_name_file_and_key(tmp_path):
    deit = tiny_timm_vit().state_dict()
    del deit["blocks.1.mlp.fc2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(deit, path)
    with pytest.raises(ValueError, match=rf"{path}.*blocks\.1\.mlp\.fc2\.weight missing"):
        load_deit(WeakTr(tiny_config(3)), path)
    wide = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4).state_dict()
    with pytest.raises(ValueError, match="do not fit width 32"):
        load_deit(WeakTr(tiny_config(3)), wide)


def test_blocks_match_timm():
    vit = tiny_timm_vit().eval()
    model = WeakTr(tiny_config(1, drop_path=0.0)).eval()
    load_deit(model, vit.state_dict())
    tokens = torch.randn(2, 17, 32)
    ours, theirs = tokens, tokens
    with torch.no_grad():
        for block, reference in zip(model.blocks, vit.blocks):
            ours, attn, branch = block(ours)
            theirs = reference(theirs)
            assert attn.shape == (2, 4, 17, 17) and branch.shape == (2, 17, 32)
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_backbone_with_final_norm_matches_timm_forward_features():
    vit = tiny_timm_vit().eval()
    model = WeakTr(tiny_config(1, drop_path=0.0, final_norm=True)).eval()
    load_deit(model, vit.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, *_ = model.encode(images)
        assert torch.allclose(tokens, vit.forward_features(images), atol=1e-5)


# --- the release's checkpoints and COCO's 90 class tokens ------------------------------------------------


def _save_release_checkpoint(path, model: WeakTr) -> None:
    """A phase-1 file as the release writes it: the model's state beside its training state and argparse args."""
    import argparse

    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 59,
                "args": argparse.Namespace(model="deit_small_WeakTr_AAF_AttnFeat_patch16_224", reduction=8)}, path)


@pytest.mark.parametrize("tokens, slots", [(20, None), (90, list(COCO_CLASS_SLOTS))])
def test_a_release_checkpoint_loads_strictly_and_computes_the_same_maps(tmp_path, tokens, slots):
    torch.manual_seed(11)
    reference = WeakTr(tiny_config(tokens)).eval()
    with torch.no_grad():  # random weights, attention made non-uniform so that the maps carry information
        for block in reference.blocks:
            block.attn.qkv.weight.mul_(4.0)
    path = tmp_path / "WeakTr_CAM_Generation.pth"
    _save_release_checkpoint(path, reference)

    loaded = load_weaktr_checkpoint(path, tiny_config(tokens, class_slots=slots), sha256=file_digest(path)).eval()
    images = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        expected, got = reference(images), loaded(images)
    for name, a, b in zip(expected._fields, expected, got):
        assert torch.equal(a, b), name
    assert got.fine_cam.shape[1] == tokens
    classes = class_maps(loaded.config, got.fine_cam)
    assert classes.shape[1] == (20 if slots is None else 80)
    if slots is not None:  # COCO class 11, "stop sign", is category 13: slot 12
        assert torch.equal(classes[:, 11], got.fine_cam[:, 12])


def test_a_checkpoint_of_another_geometry_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "voc.pth"
    _save_release_checkpoint(path, WeakTr(tiny_config(20)))
    with pytest.raises(ValueError, match=r"voc\.pth.*90 class tokens.*cls_token has shape"):
        load_weaktr_checkpoint(path, tiny_config(90, class_slots=list(COCO_CLASS_SLOTS)))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_weaktr_checkpoint(path, tiny_config(20), sha256="0" * 64)


def test_coco_classes_sit_in_the_releases_category_slots():
    # COCO 2014's 80 category ids; the release's slot is id - 1
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
           34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
           62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
    assert list(COCO_CLASS_SLOTS) == [i - 1 for i in ids]
    assert len(COCO_SLOTS) == 90 and len(COCO) == len(load_class_lists()["coco_classes"]) == 80
    method = resolve_methods({"s": {"kind": "semples"}})["s"]
    coco = class_tokens(method, "coco", load_class_lists()["coco_classes"])
    assert coco == {"num_classes": 90, "class_slots": [i - 1 for i in ids]}
    assert class_tokens(method, "voc", VOC) == {"num_classes": 20, "class_slots": None}
    per_class = resolve_methods({"s": {"kind": "semples", "weaktr": {"class_tokens": "per_class"}}})["s"]
    assert class_tokens(per_class, "coco", COCO) == {"num_classes": 80, "class_slots": None}


def test_empty_slots_are_negatives_of_the_phase1_loss():
    config = tiny_config(5, class_slots=[0, 2, 4])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert token_labels(config, labels).tolist() == [[1, 0, 0, 0, 1], [0, 0, 1, 0, 0]]
    model = WeakTr(config)
    output = model(torch.randn(2, 3, 32, 32))
    loss = phase1_loss(output, token_labels(config, labels))
    # the two empty slots count as classes that are never present: the loss is over all five tokens
    five = torch.nn.functional.multilabel_soft_margin_loss(output.class_logits, token_labels(config, labels))
    three = torch.nn.functional.multilabel_soft_margin_loss(class_maps(config, output.class_logits), labels)
    assert not torch.isclose(five, three)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="class_slots"):
        tiny_config(5, class_slots=[0, 5])
