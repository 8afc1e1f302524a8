"""Tests for wsss.clip: building/loading CLIP (factory), CLIP-ES preprocessing (transform) and the image token path."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from PIL import Image
from torchvision import transforms as T

from wsss.clip.factory import build_clip, config_from_openai_state_dict, load_clip
from wsss.clip.transform import image_stats, image_to_tensor, preprocess_image, resize_to_patch_multiple
from wsss.clip.transformer import (
    add_head_sum,
    attention_parts,
    block_forward,
    block_forward_with_attention,
    embedding_from_attention_output,
    encode_image_tokens,
    image_embedding_from_last_block,
    interpolate_pos_embed,
)
from wsss.digests import file_digest

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_clip(copy.deepcopy(TINY)).eval().requires_grad_(False)


def rand_image(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def test_build_clip_dims_and_bad_config():
    m = tiny()
    assert isinstance(m, CLIP)
    assert m.visual.conv1.weight.shape == (64, 3, 16, 16)
    assert m.visual.transformer.resblocks[0].attn.num_heads == 4
    assert m.visual.proj.shape == (64, 32)
    assert type(m.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    with pytest.raises(ValueError, match="unknown keys"):
        build_clip({**TINY, "bogus": 1})
    with pytest.raises(ValueError, match="missing"):
        build_clip({"embed_dim": 8})


def test_resize_voc_size_to_patch_multiple():
    img = rand_image(500, 375)
    out = resize_to_patch_multiple(img, 16)
    assert out.size == (512, 384)
    # exactly PIL bicubic, the same call torchvision's Resize((h, w), BICUBIC) makes on PIL images
    ref = T.Resize((384, 512), interpolation=T.InterpolationMode.BICUBIC)(img)
    assert np.array_equal(np.asarray(out), np.asarray(ref))


def test_resize_non_multiple_and_keeps_mode():
    img = rand_image(33, 17, mode="L")
    out = resize_to_patch_multiple(img, 16)
    assert out.size == (48, 32) and out.mode == "L"
    # already a multiple: size unchanged
    assert resize_to_patch_multiple(rand_image(32, 48), 16).size == (32, 48)
    with pytest.raises(ValueError):
        resize_to_patch_multiple(img, 0)


def test_input_scale_resizes_once_to_the_scaled_patch_multiple():
    img = rand_image(101, 90, seed=5)  # (width, height)
    out = resize_to_patch_multiple(img, 8, scale=2.0)
    assert out.size == (208, 184)  # ceil(2 * 101 / 8) * 8, ceil(2 * 90 / 8) * 8
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((208, 184), Image.Resampling.BICUBIC)))
    assert torch.equal(preprocess_image(img, 8, MEAN, STD, scale=2.0), image_to_tensor(out, MEAN, STD))
    assert resize_to_patch_multiple(img, 8, scale=1.0).size == resize_to_patch_multiple(img, 8).size == (104, 96)
    with pytest.raises(ValueError, match="scale"):
        resize_to_patch_multiple(img, 8, scale=0)


def test_image_to_tensor_matches_torchvision():
    img = rand_image(40, 24, seed=1)
    ref = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])(img)
    assert torch.equal(image_to_tensor(img, MEAN, STD), ref)
    assert image_stats(tiny()) == (MEAN, STD)


def test_image_to_tensor_every_level_and_grayscale_match_torchvision():
    # every uint8 value in every channel, in a different order per channel
    rng = np.random.default_rng(3)
    arr = np.stack([rng.permutation(256) for _ in range(3)], axis=-1).astype(np.uint8).reshape(16, 16, 3)
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.3, 0.25)
    for img in (Image.fromarray(arr, mode="RGB"), Image.fromarray(arr[:, :, 0], mode="L")):
        ref = T.Compose([T.ToTensor(), T.Normalize(mean, std)])(img.convert("RGB"))
        out = image_to_tensor(img, mean, std)
        assert out.is_contiguous() and torch.equal(out, ref)
    one = T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.25,))])(Image.fromarray(arr, mode="RGB"))
    assert torch.equal(image_to_tensor(Image.fromarray(arr, mode="RGB"), (0.5,), (0.25,)), one)


def test_interpolate_pos_embed_shapes_and_cls():
    pos = torch.randn(1 + 14 * 14, 64)
    out = interpolate_pos_embed(pos, (24, 32))
    assert out.shape == (1 + 768, 64)
    assert torch.equal(out[0], pos[0])
    assert torch.allclose(interpolate_pos_embed(pos, (14, 14)), pos, atol=1e-6)
    with pytest.raises(ValueError):
        interpolate_pos_embed(torch.randn(1 + 15, 4), (4, 4))


def test_interpolate_pos_embed_bilinear_half_pixel_values():
    # a ramp along the width: bilinear with align_corners=False samples at (x + 0.5) * G / w - 0.5, clamped
    g, w = 4, 6
    ramp = torch.arange(g, dtype=torch.float32)[None, :].expand(g, g)
    pos = torch.cat([torch.full((1, 2), 7.0), torch.stack([ramp, 2 * ramp], dim=-1).reshape(g * g, 2)])
    out = interpolate_pos_embed(pos, (g, w))[1:].reshape(g, w, 2)
    xs = [min(max((x + 0.5) * g / w - 0.5, 0.0), g - 1.0) for x in range(w)]
    for x in range(w):
        assert torch.allclose(out[:, x, 0], torch.full((g,), xs[x]), atol=1e-6)
        assert torch.allclose(out[:, x, 1], torch.full((g,), 2 * xs[x]), atol=1e-6)


def test_voc_sized_image_gives_768_tokens():
    m = tiny()
    x = preprocess_image(rand_image(500, 375), 16)
    assert x.shape == (3, 384, 512)
    tokens, attns = encode_image_tokens(m, x[None], upto_block=1)
    assert tokens.shape == (1, 1 + 768, 64)
    assert len(attns) == 1 and attns[0].shape == (1, 769, 769)
    assert interpolate_pos_embed(m.visual.positional_embedding, (24, 32)).shape == (1 + 768, 64)


def test_block_forward_matches_open_clip_block_and_manual_attention():
    m = tiny()
    blk = m.visual.transformer.resblocks[0]
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        y, attn = block_forward_with_attention(blk, x)
        assert torch.allclose(y, blk(x), atol=1e-5)
        # head-averaged softmax attention, recomputed from the in-projection
        a = blk.ln_1(x)
        q, k, _ = F.linear(a, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
        heads, hd = blk.attn.num_heads, 64 // blk.attn.num_heads
        q = q.reshape(2, 17, heads, hd).transpose(1, 2)
        k = k.reshape(2, 17, heads, hd).transpose(1, 2)
        manual = ((q @ k.transpose(-1, -2)) / math.sqrt(hd)).softmax(-1).mean(1)
    assert attn.shape == (2, 17, 17)
    assert torch.allclose(attn, manual, atol=1e-6)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 17), atol=1e-5)


def test_native_size_full_path_equals_open_clip_encode_image():
    m = tiny()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, attns = encode_image_tokens(m, img, upto_block=2)
        mine = m.visual.ln_post(tokens[:, 0]) @ m.visual.proj
        ref = m.encode_image(img)
    assert len(attns) == 2
    assert torch.allclose(mine, ref, atol=1e-5)


def test_last_block_embedding_is_mean_of_patch_tokens():
    m = tiny()
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens, _ = encode_image_tokens(m, img, upto_block=1)
        emb, ln1, attn = image_embedding_from_last_block(m, tokens)
        # independent path through open_clip's own modules
        x = m.visual.transformer(m.visual._embeds(img))
        ref = m.visual.ln_post(x)[:, 1:].mean(1) @ m.visual.proj
    assert emb.shape == (1, 32) and ln1.shape == (1, 17, 64) and attn.shape == (1, 17, 17)
    assert torch.allclose(emb, ref, atol=1e-5)
    assert torch.allclose(ln1, m.visual.transformer.resblocks[-1].ln_1(tokens), atol=1e-6)
    # with grad enabled the ln_1 output is differentiable
    emb2, ln1b, _ = image_embedding_from_last_block(m, tokens)
    (g,) = torch.autograd.grad(emb2.sum(), ln1b)
    assert g.shape == ln1b.shape and g.abs().sum() > 0


def test_image_not_multiple_of_patch_is_rejected():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        encode_image_tokens(tiny(), torch.randn(1, 3, 40, 64), upto_block=1)
    with pytest.raises(ValueError, match="upto_block"):
        encode_image_tokens(tiny(), torch.randn(1, 3, 64, 64), upto_block=5)


def _same_outputs(a, b):
    img = torch.randn(1, 3, 64, 48)
    text = torch.randint(1, 1000, (2, 77))
    text[:, 10] = 49407
    with torch.no_grad():
        ta, _ = encode_image_tokens(a, img, upto_block=2)
        tb, _ = encode_image_tokens(b, img, upto_block=2)
        # frozen modules may take torch's fused attention path, hence allclose rather than equal
        return torch.allclose(ta, tb, atol=1e-5) and torch.allclose(a.encode_text(text), b.encode_text(text), atol=1e-5)


def test_load_clip_state_dict_round_trip(tmp_path):
    src = tiny(seed=5)
    plain = tmp_path / "plain.pt"
    torch.save(src.state_dict(), plain)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        m = load_clip(None, str(path), model_cfg=TINY, device="cpu", precision="fp32")
        assert not m.training
        assert not any(p.requires_grad for p in m.parameters())
        assert _same_outputs(src, m)
    # fp16 is only used on CUDA; on CPU the model stays fp32
    m16 = load_clip(None, str(plain), model_cfg=TINY, device="cpu", precision="fp16")
    assert m16.visual.conv1.weight.dtype == torch.float32
    # random init differs
    assert not _same_outputs(src, load_clip(None, None, model_cfg=TINY, device="cpu", precision="fp32"))


def test_load_clip_sha256_check(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny().state_dict(), path)
    digest = file_digest(path)
    load_clip(None, str(path), model_cfg=TINY, sha256=digest, device="cpu", precision="fp32")
    load_clip(None, str(path), model_cfg=TINY, sha256=digest[:8].upper(), device="cpu", precision="fp32")
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(ValueError) as err:
        load_clip(None, str(path), model_cfg=TINY, sha256=wrong, device="cpu", precision="fp32")
    msg = str(err.value)
    assert str(path) in msg and digest in msg and wrong in msg


def test_load_clip_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_clip(None, str(tmp_path / "missing.pt"), model_cfg=TINY, device="cpu")
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        load_clip("ViT-B-16", "no_such_tag", device="cpu")
    with pytest.raises(ValueError, match="precision"):
        load_clip(None, None, model_cfg=TINY, device="cpu", precision="bf16")
    bad = tmp_path / "other.pt"
    cfg = copy.deepcopy(TINY)
    cfg["vision_cfg"]["width"] = 32
    torch.manual_seed(0)
    torch.save(build_clip(cfg).state_dict(), bad)
    with pytest.raises(ValueError, match="other.pt"):
        load_clip(None, str(bad), model_cfg=TINY, device="cpu")


def test_load_clip_torchscript_archive(tmp_path):
    src = tiny(seed=7)
    path = tmp_path / "ViT-tiny.pt"
    with pytest.warns(FutureWarning):  # torch.jit is deprecated, but OpenAI's weights ship as a TorchScript archive
        torch.jit.script(src).save(str(path))
    m = load_clip(None, str(path), model_cfg=TINY, device="cpu", precision="fp32")
    assert _same_outputs(src, m)
    # the config can be inferred from an OpenAI-style state dict (heads assume 64-wide heads, as OpenAI's)
    cfg = config_from_openai_state_dict(src.state_dict())
    assert cfg["embed_dim"] == 32 and cfg["quick_gelu"] is True
    assert cfg["vision_cfg"] == {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 64}
    assert cfg["text_cfg"]["context_length"] == 77 and cfg["text_cfg"]["layers"] == 2
    assert cfg["text_cfg"]["vocab_size"] == 49408 and cfg["text_cfg"]["width"] == 64


def _activations(model) -> set[str]:
    """Class names of the MLP activations of both towers."""
    return {type(block.mlp.gelu).__name__ for tower in (model.visual.transformer, model.transformer)
            for block in tower.resblocks}


def _features(model):
    torch.manual_seed(11)
    image = torch.randn(2, 3, 64, 64)
    text = torch.randint(1, 1000, (2, 77))
    text[:, 10] = 49407
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


def test_openai_weights_build_quick_gelu_whatever_the_config_says(tmp_path, caplog):
    reference = tiny(seed=7)  # QuickGELU, as OpenAI trained its CLIPs
    gelu_cfg = {**copy.deepcopy(TINY), "quick_gelu": False}  # what open_clip's plain "ViT-B-16" config says
    archive = tmp_path / "ViT-tiny.pt"
    with pytest.warns(FutureWarning):
        torch.jit.script(reference).save(str(archive))
    # a state dict taken from OpenAI's archive keeps the archive's three extra entries
    state_dict = tmp_path / "ViT-tiny-state-dict.pt"
    extras = {"input_resolution": torch.tensor(64), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}
    torch.save({**reference.state_dict(), **extras}, state_dict)
    loaded = []
    for path in (archive, state_dict):
        caplog.clear()
        with caplog.at_level("WARNING", logger="wsss.clip.factory"):
            model = load_clip(None, str(path), model_cfg=gelu_cfg, device="cpu", precision="fp32")
        assert _activations(model) == {"QuickGELU"}
        assert any("OpenAI's" in r.message and str(path) in r.message for r in caplog.records), "the choice is logged"
        loaded.append(_features(model))
    expected = _features(reference)
    for image, text in loaded:
        assert torch.equal(image, loaded[0][0]) and torch.equal(text, loaded[0][1]), "archive and state dict agree"
        assert torch.allclose(image, expected[0], atol=1e-6) and torch.allclose(text, expected[1], atol=1e-6)
    # the same weights under GELU give other features: the check above can fail
    gelu = build_clip(gelu_cfg).eval()
    gelu.load_state_dict(reference.state_dict())
    assert not torch.allclose(_features(gelu)[0], expected[0], atol=1e-3)


def test_weights_of_unknown_origin_follow_the_name_and_say_so(tmp_path, caplog):
    plain = tmp_path / "plain.pt"
    torch.save(tiny(seed=3).state_dict(), plain)  # OpenAI's and open_clip's key names are the same
    gelu_cfg = {**copy.deepcopy(TINY), "quick_gelu": False}
    with caplog.at_level("WARNING", logger="wsss.clip.factory"):
        model = load_clip(None, str(plain), model_cfg=gelu_cfg, device="cpu", precision="fp32")
    assert _activations(model) == {"GELU"}
    assert any("-quickgelu" in r.message and str(plain) in r.message for r in caplog.records)
    with caplog.at_level("INFO", logger="wsss.clip.factory"):
        model = load_clip(None, str(plain), model_cfg=TINY, device="cpu", precision="fp32")
    assert _activations(model) == {"QuickGELU"}
    assert any("building QuickGELU" in r.message for r in caplog.records)


def test_faithful_position_table_is_rounded_to_fp16_cls_row_included():
    model = tiny(seed=2)
    with torch.no_grad():
        model.visual.positional_embedding.add_(torch.randn_like(model.visual.positional_embedding) * 1e-3)
    image = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        fp32, _ = encode_image_tokens(model, image, upto_block=0)
        faithful, _ = encode_image_tokens(model, image, upto_block=0, position_dtype=torch.float16)
        # by hand: patches + CLS, plus the interpolated table as the official code hands it back (fp16)
        visual = model.visual
        x = visual.conv1(image).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.reshape(1, 1, -1), x], dim=1)
        pos = interpolate_pos_embed(visual.positional_embedding, (6, 5)).half()
        expected = visual.ln_pre(x + pos.float())
    assert torch.equal(faithful, expected)
    assert not torch.equal(fp32, faithful)


def test_encode_image_tokens_only_requested_attention_maps():
    m = tiny()
    img = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        full_tokens, full = encode_image_tokens(m, img, upto_block=2)
        tokens, some = encode_image_tokens(m, img, upto_block=2, attention_blocks=[-1])
    assert some[0] is None and torch.allclose(some[1], full[1], atol=1e-7)
    assert torch.allclose(tokens, full_tokens, atol=1e-5)  # fused vs explicit attention: rounding only
    _, none = encode_image_tokens(m, img, upto_block=2, attention_blocks=[])
    assert none == [None, None]
    with pytest.raises(ValueError, match="attention_blocks"):
        encode_image_tokens(m, img, upto_block=2, attention_blocks=[2])


def test_block_forward_equals_open_clip_block():
    m = tiny()
    blk = m.visual.transformer.resblocks[1]
    x = torch.randn(1, 9, 64)
    with torch.no_grad():
        assert torch.allclose(block_forward(blk, x), block_forward_with_attention(blk, x)[0], atol=1e-5)


def test_attention_parts_match_multihead_attention():
    m = tiny()
    blk = m.visual.transformer.resblocks[0]
    x = torch.randn(11, 64)
    with torch.no_grad():
        parts = attention_parts(blk.attn, x)
        out, weights = blk.attn(x[None], x[None], x[None], need_weights=True)
        projected = F.linear(parts.out, blk.attn.out_proj.weight, blk.attn.out_proj.bias)
    heads = blk.attn.num_heads
    assert parts.q.shape == parts.k.shape == parts.v.shape == (heads, 11, 64 // heads)
    assert parts.probs.shape == (heads, 11, 11) and parts.scale == pytest.approx(1 / math.sqrt(64 // heads))
    assert torch.allclose(parts.probs.sum(-1), torch.ones(heads, 11), atol=1e-6)
    assert torch.allclose(parts.probs.mean(0), weights[0], atol=1e-7)
    assert torch.allclose(projected, out[0], atol=1e-6)
    # with autograd recording, the softmax is not done in place (the graph stays valid)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(attention_parts(blk.attn, xr).out.sum(), xr)
    assert g.shape == x.shape and torch.isfinite(g).all()
    with pytest.raises(ValueError, match="one"):
        attention_parts(blk.attn, x[None])


def test_embedding_from_attention_output_equals_last_block():
    m = tiny()
    img = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        tokens, _ = encode_image_tokens(m, img, upto_block=1)
        emb, ln1, attn = image_embedding_from_last_block(m, tokens)
        emb_fused, _, none = image_embedding_from_last_block(m, tokens, need_attention=False)
        parts = attention_parts(m.visual.transformer.resblocks[-1].attn, ln1[0])
        emb_parts = embedding_from_attention_output(m, tokens, parts.out[None])
    assert none is None
    assert torch.allclose(emb_fused, emb, atol=1e-5)
    assert torch.allclose(emb_parts, emb, atol=1e-5)
    assert torch.allclose(parts.probs.mean(0), attn[0], atol=1e-7)


def test_attention_sum_accumulates_head_sums_of_the_selected_blocks():
    m = tiny()
    img = torch.randn(2, 3, 32, 48)
    blk = m.visual.transformer.resblocks[0]
    with torch.no_grad():
        tokens, maps = encode_image_tokens(m, img, upto_block=2)
        embedded, _ = encode_image_tokens(m, img, upto_block=0)
        _, per_head = block_forward_with_attention(blk, embedded, average_heads=False)
        total = torch.full((2, 7, 7), 0.5)
        tokens_sum, none = encode_image_tokens(m, img, upto_block=2, attention_blocks=[0, 1], attention_sum=total)
    heads = blk.attn.num_heads
    assert per_head.shape == (2, heads, 7, 7) and torch.allclose(per_head.mean(1), maps[0], atol=1e-7)
    assert none == [None, None] and torch.allclose(tokens_sum, tokens, atol=1e-6)
    # added in place to what the buffer held, summed over heads and blocks
    assert torch.allclose(total, 0.5 + heads * (maps[0] + maps[1]), atol=1e-5)
    add_head_sum(total, per_head)
    assert torch.allclose(total, 0.5 + heads * (2 * maps[0] + maps[1]), atol=1e-5)
