"""Tests for wsss.methods.clip_es.softmax_gradcam: softmax-GradCAM against per-class loops, independent autograd and the analytic gradient."""

import copy

import pytest
import torch
import torch.nn.functional as F

from wsss.clip.factory import build_clip
from wsss.clip.transformer import attention_parts, encode_image_tokens, image_embedding_from_last_block
from wsss.methods.clip_es.softmax_gradcam import (
    cam_from_activations,
    cam_from_channel_weights,
    layer_mean_attention,
    minmax_normalize,
    patch_sum_of_input_gradients,
    softmax_gradcam,
    softmax_gradcam_batch,
)

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 1},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_clip(copy.deepcopy(TINY)).eval().requires_grad_(False)
    # a smaller logit scale keeps the random model's softmax away from saturation
    m.logit_scale.fill_(2.0)
    return m


@pytest.fixture(scope="module")
def texts():
    g = torch.Generator().manual_seed(1)
    fg = F.normalize(torch.randn(3, 32, generator=g), dim=-1)
    bg = F.normalize(torch.randn(5, 32, generator=g), dim=-1)
    return fg, bg


def _reference_cam(model, image, text, k, score):
    """From-scratch GradCAM using only open_clip's own modules, one autograd pass per class."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    with torch.no_grad():
        z = visual._embeds(image[None])  # native size: open_clip's own embedding
        for blk in blocks[:-1]:
            z = blk(z)
    last = blocks[-1]
    cams = []
    for c in range(k):
        a = last.ln_1(z).detach().requires_grad_(True)
        x = z + last.attn(a, a, a, need_weights=False)[0]
        x = x + last.mlp(last.ln_2(x))
        f = visual.ln_post(x)[:, 1:].mean(1) @ visual.proj
        f = f / f.norm(dim=-1, keepdim=True)
        y = model.logit_scale.exp() * f @ text.t()
        s = y.softmax(-1) if score == "softmax" else y
        (g,) = torch.autograd.grad(s[0, c], a)
        alpha = g[0, 1:].mean(0)
        cam = torch.relu((a[0, 1:].detach() * alpha).sum(-1)).reshape(4, 4)
        cam = cam - cam.min()
        cams.append(cam / (cam.max() + 1e-7))
    return torch.stack(cams)


@pytest.mark.parametrize("score", ["softmax", "logit"])
def test_matches_independent_per_class_autograd(model, texts, score):
    fg, bg = texts
    image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(2))
    res = softmax_gradcam(model, image, fg, bg, score=score)
    ref = _reference_cam(model, image, torch.cat([fg, bg]), 3, score)
    assert res.cams.dtype == torch.float32 and res.cams.shape == (3, 4, 4)
    assert torch.allclose(res.cams, ref, atol=1e-4)


def test_batched_backward_equals_per_class_loop(model, texts):
    fg, bg = texts
    image = torch.randn(3, 48, 80, generator=torch.Generator().manual_seed(3))
    res = softmax_gradcam(model, image, fg, bg)
    tokens, _ = encode_image_tokens(model, image[None], upto_block=2)
    text = torch.cat([fg, bg])
    loop = []
    for c in range(3):
        emb, ln1, _ = image_embedding_from_last_block(model, tokens)
        f = emb / emb.norm(dim=-1, keepdim=True)
        s = (model.logit_scale.exp() * f @ text.t()).softmax(-1)
        (g,) = torch.autograd.grad(s[0, c], ln1)
        loop.append(cam_from_activations(ln1.detach()[:, 1:], g[:, 1:], (3, 5)))
    assert torch.allclose(res.cams, torch.cat(loop), atol=1e-5)
    assert res.grid_hw == (3, 5)


def test_softmax_gradient_equals_analytic_formula(model, texts):
    # ds_c/dA = s_c (1 - s_c) dy_c/dA - sum_{j != c} s_c s_j dy_j/dA  (spec §5.2)
    fg, bg = texts
    image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(4))
    text = torch.cat([fg, bg])
    tokens, _ = encode_image_tokens(model, image[None], upto_block=2)
    emb, ln1, _ = image_embedding_from_last_block(model, tokens)
    f = emb / emb.norm(dim=-1, keepdim=True)
    y = (model.logit_scale.exp() * f @ text.t())[0]
    s = y.softmax(-1).detach()
    dy = torch.stack([torch.autograd.grad(y[j], ln1, retain_graph=True)[0][0, 1:] for j in range(len(text))])
    grads = []
    for c in range(3):
        coef = -s[c] * s
        coef[c] = s[c] * (1 - s[c])
        grads.append((coef[:, None, None] * dy).sum(0))
    acts = ln1.detach()[0, 1:].expand(3, -1, -1)
    analytic = cam_from_activations(acts, torch.stack(grads), (4, 4))
    res = softmax_gradcam(model, image, fg, bg)
    assert torch.allclose(res.cams, analytic, atol=1e-4)


def test_only_present_classes_and_background_in_softmax(model, texts):
    fg, bg = texts
    image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(5))
    res = softmax_gradcam(model, image, fg[:2], bg)
    assert res.logits.shape == (2 + 5,)
    with torch.no_grad():
        tokens, _ = encode_image_tokens(model, image[None], upto_block=2)
        emb, _, _ = image_embedding_from_last_block(model, tokens)
        f = F.normalize(emb, dim=-1)
        expect = model.logit_scale.exp() * f @ torch.cat([fg[:2], bg]).t()
    assert torch.allclose(res.logits, expect[0], atol=1e-5)
    # the absent third class plays no role: the present classes' CAMs do not depend on it
    assert torch.allclose(res.cams, softmax_gradcam(model, image, fg[:2], bg).cams)
    with_third = softmax_gradcam(model, image, fg, bg)
    assert not torch.allclose(with_third.cams[:2], res.cams, atol=1e-3)
    no_bg = softmax_gradcam(model, image, fg, bg, use_background=False)
    assert no_bg.logits.shape == (3,)
    assert torch.allclose(no_bg.cams, _reference_cam(model, image, fg, 3, "softmax"), atol=1e-4)
    assert not torch.allclose(no_bg.cams, with_third.cams, atol=1e-3)


def test_attention_mean_layers(model, texts):
    fg, bg = texts
    image = torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(6))
    tokens, attns = encode_image_tokens(model, image[None], upto_block=3)
    maps = [a[0, 1:, 1:] for a in attns]  # all three blocks, same weights as the last-block pass
    res = softmax_gradcam(model, image, fg, bg)  # default [-8:] of 3 blocks = all of them
    assert res.attention_mean.shape == (6, 6) and res.attention_mean.dtype == torch.float32
    assert torch.allclose(res.attention_mean, torch.stack(maps).mean(0), atol=1e-6)
    last_two = softmax_gradcam(model, image, fg, bg, attn_layers=[-2, None])
    assert torch.allclose(last_two.attention_mean, (maps[1] + maps[2]) / 2, atol=1e-6)
    excl_last = softmax_gradcam(model, image, fg, bg, attn_layers=(-3, -1))
    assert torch.allclose(excl_last.attention_mean, (maps[0] + maps[1]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="select none"):
        layer_mean_attention(attns, (5, None))


def test_cam_range_and_bad_inputs(model, texts):
    fg, bg = texts
    image = torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(7))
    res = softmax_gradcam(model, image, fg, bg)
    assert float(res.cams.min()) >= 0.0 and float(res.cams.max()) <= 1.0
    assert torch.allclose(res.cams.amax(dim=(1, 2)), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="score"):
        softmax_gradcam(model, image, fg, bg, score="prob")
    with pytest.raises(ValueError, match="fg_text"):
        softmax_gradcam(model, image, fg[:0], bg)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        softmax_gradcam(model, torch.randn(3, 40, 32), fg, bg)


def test_cam_from_activations_hand_example():
    # N = 4 patches on a 2x2 grid, D = 2 channels
    acts = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]]])
    grads = torch.tensor([[[0.4, 0.0], [0.0, -0.4], [0.4, 0.2], [0.8, 0.2]]])
    # alpha = mean over patches = (0.4, 0.0); raw = (0.4, 0, 0.8, -0.4) -> ReLU -> (0.4, 0, 0.8, 0)
    cam = cam_from_activations(acts, grads, (2, 2))
    expect = torch.tensor([[[0.5, 0.0], [1.0, 0.0]]])
    assert torch.allclose(cam, expect, atol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        cam_from_activations(acts, grads, (3, 2))


def test_minmax_normalize():
    x = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    out = minmax_normalize(x)
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]), atol=1e-6)
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map becomes all zeros (no division by 0)


def test_half_precision_weights_follow_the_reference_dtypes(model, texts):
    # OpenAI-style manual fp16: half weights, LayerNorm computed in fp32 (runs on CPU too)
    from open_clip.model import convert_weights_to_lp

    half = build_clip(copy.deepcopy(TINY), cast_dtype=torch.float16).eval().requires_grad_(False)
    half.load_state_dict(model.state_dict())
    convert_weights_to_lp(half, dtype=torch.float16)
    fg, bg = texts
    image = torch.randn(3, 64, 96, generator=torch.Generator().manual_seed(8))
    r16 = softmax_gradcam(half, image, fg, bg)
    r32 = softmax_gradcam(model, image, fg, bg)
    assert r16.cams.dtype == torch.float32 and r16.attention_mean.dtype == torch.float32
    # the layer mean is rounded to fp16 like the reference's GPU mean, then cast to fp32
    assert torch.equal(r16.attention_mean, r16.attention_mean.half().float())
    assert torch.equal(r16.logits, r16.logits.half().float())
    assert torch.allclose(r16.attention_mean, r32.attention_mean, atol=1e-3)
    assert torch.allclose(r16.logits, r32.logits, atol=2e-2)
    assert torch.allclose(r16.cams, r32.cams, atol=3e-2)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("score", ["softmax", "logit"])
@pytest.mark.parametrize("layers", [(-8, None), (-3, -1)])
def test_fast_arithmetic_equals_reference_arithmetic(model, texts, k, score, layers):
    # the fast path (one vectorised backward to the attention output, patch sums by hand below it, one
    # running sum of the maps) against the reference arithmetic (every token's gradient w.r.t. the ln_1
    # output, then the mean; per-block head means, then the layer mean)
    fg, bg = texts
    image = torch.randn(3, 48, 64, generator=torch.Generator().manual_seed(10 + k))
    fast = softmax_gradcam(model, image, fg[:k], bg, score=score, attn_layers=layers, arithmetic="fast")
    slow = softmax_gradcam(model, image, fg[:k], bg, score=score, attn_layers=layers, arithmetic="reference")
    assert fast.cams.shape == slow.cams.shape == (k, 3, 4)
    assert torch.allclose(fast.cams, slow.cams, atol=1e-5)
    assert torch.allclose(fast.logits, slow.logits, atol=1e-6)
    assert torch.allclose(fast.attention_mean, slow.attention_mean, atol=1e-7)
    # fp32 weights take the fast path by default
    assert torch.equal(softmax_gradcam(model, image, fg[:k], bg, score=score, attn_layers=layers).cams, fast.cams)


def test_patch_sum_of_input_gradients_matches_autograd():
    # independent check of the hand-written backward: autograd through scaled_dot_product_attention, fp64
    torch.manual_seed(11)
    mha = torch.nn.MultiheadAttention(24, 3, batch_first=True).double().eval().requires_grad_(False)
    x = torch.randn(9, 24, dtype=torch.float64)
    g = torch.randn(4, 9, 24, dtype=torch.float64)  # 4 arbitrary upstream gradients w.r.t. the attention output
    xr = x.clone().requires_grad_(True)
    q, k, v = F.linear(xr, mha.in_proj_weight, mha.in_proj_bias).reshape(9, 3, 3, 8).permute(1, 2, 0, 3)
    out = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(9, 24)
    expect = torch.stack(
        [torch.autograd.grad((out * g[c]).sum(), xr, retain_graph=True)[0][1:].sum(0) for c in range(4)]
    )
    got = patch_sum_of_input_gradients(attention_parts(mha, x), g, mha.in_proj_weight)
    assert got.shape == (4, 24)
    assert torch.allclose(got, expect, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="d_out"):
        patch_sum_of_input_gradients(attention_parts(mha, x), g[:, 1:], mha.in_proj_weight)


def test_half_precision_default_keeps_reference_arithmetic(model, texts):
    from open_clip.model import convert_weights_to_lp

    half = build_clip(copy.deepcopy(TINY), cast_dtype=torch.float16).eval().requires_grad_(False)
    half.load_state_dict(model.state_dict())
    convert_weights_to_lp(half, dtype=torch.float16)
    fg, bg = texts
    image = torch.randn(3, 32, 64, generator=torch.Generator().manual_seed(12))
    auto = softmax_gradcam(half, image, fg, bg)
    reference = softmax_gradcam(half, image, fg, bg, arithmetic="reference")
    assert torch.equal(auto.cams, reference.cams) and torch.equal(auto.attention_mean, reference.attention_mean)
    fast = softmax_gradcam(half, image, fg, bg, arithmetic="fast")  # allowed, but rounds differently
    assert torch.allclose(fast.cams, reference.cams, atol=3e-2)
    with pytest.raises(ValueError, match="arithmetic"):
        softmax_gradcam(model, image, fg, bg, arithmetic="exact")


def test_cam_from_channel_weights_shared_activations():
    g = torch.Generator().manual_seed(13)
    acts = torch.randn(6, 5, generator=g)
    grads = torch.randn(2, 6, 5, generator=g)
    shared = cam_from_channel_weights(acts, grads.mean(dim=1), (2, 3))
    assert torch.equal(shared, cam_from_activations(acts.expand(2, -1, -1), grads, (2, 3)))
    with pytest.raises(ValueError, match="grid"):
        cam_from_channel_weights(acts, grads.mean(dim=1), (3, 3))


def test_cams_unaffected_by_an_outer_no_grad(model, texts):
    fg, bg = texts
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(14))
    for arithmetic in ("fast", "reference"):
        expect = softmax_gradcam(model, image, fg, bg, arithmetic=arithmetic)
        with torch.no_grad():
            got = softmax_gradcam(model, image, fg, bg, arithmetic=arithmetic)
        assert torch.equal(got.cams, expect.cams) and float(got.cams.max()) > 0.99


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_bf16_fast_mode_follows_fp32_and_keeps_fp32_outputs(texts):
    torch.manual_seed(4)
    sharp = build_clip(copy.deepcopy(TINY)).eval().requires_grad_(False)
    sharp.logit_scale.fill_(2.0)
    with torch.no_grad():  # random init gives near-uniform attention; sharpen it as a trained model's
        for block in sharp.visual.transformer.resblocks:
            block.attn.in_proj_weight[: 2 * 64] *= 5
    fg, bg = texts
    for seed in range(3):
        image = torch.randn(3, 96, 128, generator=torch.Generator().manual_seed(20 + seed))
        fp32 = softmax_gradcam(sharp, image, fg, bg, precision="fp32")
        fast = softmax_gradcam(sharp, image, fg, bg, precision="bf16")
        assert fast.cams.dtype == fast.attention_mean.dtype == torch.float32
        for c in range(3):
            assert _pearson(fast.cams[c], fp32.cams[c]) > 0.99
        assert _pearson(fast.attention_mean, fp32.attention_mean) > 0.99
        assert not torch.equal(fast.cams, fp32.cams), "bf16 is a different arithmetic"
        # faithful: the official fp16 position table; plain fp32 otherwise, so the two differ by rounding only
        faithful = softmax_gradcam(sharp, image, fg, bg, precision="faithful")
        assert not torch.equal(faithful.cams, fp32.cams) and torch.allclose(faithful.cams, fp32.cams, atol=5e-3)


def test_precision_modes_are_checked(model, texts):
    from open_clip.model import convert_weights_to_lp

    fg, bg = texts
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(15))
    with pytest.raises(ValueError, match="precision must be one of"):
        softmax_gradcam(model, image, fg, bg, precision="int8")
    with pytest.raises(ValueError, match="CUDA autocast"):
        softmax_gradcam(model, image, fg, bg, precision="fp16")  # CPU here
    half = build_clip(copy.deepcopy(TINY), cast_dtype=torch.float16).eval().requires_grad_(False)
    convert_weights_to_lp(half, dtype=torch.float16)
    with pytest.raises(ValueError, match="load it in fp32"):
        softmax_gradcam(half, image, fg, bg, precision="bf16")


@pytest.mark.parametrize("score,layers,precision", [("softmax", (-8, None), "fp32"), ("logit", (-3, -1), "faithful"),
                                                    ("softmax", (-2, None), "bf16")])
def test_batched_cams_equal_one_image_at_a_time(model, texts, score, layers, precision):
    fg, bg = texts
    images = torch.randn(3, 3, 48, 64, generator=torch.Generator().manual_seed(16))
    class_lists = [fg[:1], fg, fg[1:]]  # K = 1, 3, 2: padded to 3 in the batch
    batched = softmax_gradcam_batch(model, images, class_lists, bg, score=score, attn_layers=layers,
                                    precision=precision)
    tol = 2e-2 if precision == "bf16" else 1e-5  # bf16: the batch's GEMMs round in other places
    for image, classes, got in zip(images, class_lists, batched):
        alone = softmax_gradcam(model, image, classes, bg, score=score, attn_layers=layers, arithmetic="fast",
                                precision=precision)
        assert got.grid_hw == alone.grid_hw == (3, 4) and got.cams.shape == alone.cams.shape
        assert torch.allclose(got.cams, alone.cams, atol=tol)
        assert torch.allclose(got.attention_mean, alone.attention_mean, atol=tol / 10)
        assert torch.allclose(got.logits, alone.logits, atol=tol)
        assert float(got.cams.amax()) > 0.99


def test_batched_cams_check_their_inputs(model, texts):
    fg, bg = texts
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(17))
    with pytest.raises(ValueError, match="one \\(K>0, E\\) tensor per image"):
        softmax_gradcam_batch(model, images, [fg], bg)
    with pytest.raises(ValueError, match="images must be"):
        softmax_gradcam_batch(model, images[0], [fg], bg)


def test_cam_stage_batches_images_of_one_size_like_one_at_a_time(model, texts, tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd
    from PIL import Image

    import wsss.methods.clip_es.gradcam as stage
    from wsss.datasets import MANIFEST_COLUMNS, write_manifest
    from wsss.h5store import get_image, image_ids, open_stage, write_stage
    from wsss.methods.clip_es import DEFAULTS

    rng = np.random.default_rng(3)
    rows = []
    for i, (height, width, labels) in enumerate([(40, 60, [0]), (50, 33, [1, 2]), (40, 60, [0, 1, 2]),
                                                 (40, 60, [2]), (50, 33, [0])]):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        rows.append([f"im{i}", str(path), height, width, " ".join(map(str, labels)), "", ""])
    manifest = tmp_path / "manifest.tsv"
    write_manifest(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), manifest)
    fg, bg = texts
    text = tmp_path / "text.h5"
    with write_stage(text, "text_features", {}) as out:
        out.create_dataset("foreground", data=fg.numpy())
        out.create_dataset("background", data=bg.numpy())
    monkeypatch.setattr(stage, "load_configured_clip", lambda clip, checkpoint, device: (model, None, MEAN, STD))
    clip = {"model": "tiny", "pretrained": None, "precision": "fp32"}
    outputs = {}
    for batch_size in (1, 3):
        cam = {**DEFAULTS["cam"], "attn_layers": [-2, None], "precision": "fp32", "batch_size": batch_size}
        paths = (tmp_path / f"cams{batch_size}.h5", tmp_path / f"affinity{batch_size}.h5")
        stage.run_gradcam(manifest, "00000", 5, text, clip, [], cam, *paths)
        outputs[batch_size] = paths
    with open_stage(outputs[1][0]) as one, open_stage(outputs[3][0]) as batched, \
            open_stage(outputs[1][1]) as one_aff, open_stage(outputs[3][1]) as batched_aff:
        assert image_ids(one) == image_ids(batched) == [f"im{i}" for i in range(5)]
        for image_id in image_ids(one):
            a, b = get_image(one, image_id), get_image(batched, image_id)
            assert np.array_equal(a["keys"], b["keys"]) and a["cam"].shape == b["cam"].shape
            assert np.allclose(a["cam"], b["cam"], atol=1e-5)
            assert np.allclose(get_image(one_aff, image_id)["attention"], get_image(batched_aff, image_id)["attention"],
                               atol=1e-6)
