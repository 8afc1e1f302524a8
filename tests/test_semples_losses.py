"""Tests for wsss.methods.semples.losses: clamped cosine, pairs, soft masks, masked views and the stage losses."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.methods.semples.losses import (
    clamped_cosine,
    masked_views,
    match_loss,
    positive_pairs,
    prompt_loss,
    refine_loss,
    soft_masks,
)

LOW, HIGH = 1e-4, 0.9999
SQRT_HALF = 1 / math.sqrt(2)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# Hand-picked 2-D features (two pairs) with known cosines; the comments give the unclamped values.
V_F = _t([[1, 0], [0, 2]])
V_B = _t([[-1, 0], [5, 5]])
T = _t([[3, 4], [1, 1]])
U = _t([[4, 3], [1, 0]])
S_VF_T = [0.6, SQRT_HALF]
S_VB_T = [LOW, HIGH]  # -0.6 and 1.0: the clamp bites at both ends
S_VB_U = [LOW, SQRT_HALF]  # -0.8 and 1/sqrt(2)
S_T_U = [0.96, SQRT_HALF]
S_VF_U = [0.8, LOW]  # 0.8 and 0.0


def _mean(values):
    return sum(values) / len(values)


def test_clamped_cosine_hand_values():
    assert clamped_cosine(V_F, T).tolist() == pytest.approx(S_VF_T, rel=1e-12)
    assert clamped_cosine(V_B, T).tolist() == pytest.approx(S_VB_T, rel=1e-12)
    assert clamped_cosine(T, U).tolist() == pytest.approx(S_T_U, rel=1e-12)
    assert clamped_cosine(V_F, U).tolist() == pytest.approx(S_VF_U, rel=1e-12)
    assert clamped_cosine(V_B, T, low=-1.0, high=1.0).tolist() == pytest.approx([-0.6, 1.0], rel=1e-12)


def test_clamped_cosine_half_precision_stays_below_one():
    s = clamped_cosine(V_B.half(), T.half())
    assert s.dtype == torch.float32
    assert s[1].item() == pytest.approx(HIGH, rel=1e-7)
    assert torch.isfinite(torch.log1p(-s)).all()


def test_match_loss_hand_computation():
    total, terms = match_loss(V_F, V_B, T, lambda1=2.4)
    fg = _mean([-math.log(s) for s in S_VF_T])
    bg = _mean([-math.log(1 - s) for s in S_VB_T])
    assert total.ndim == 0
    assert total.item() == pytest.approx(fg + 2.4 * bg, rel=1e-12)
    assert terms == pytest.approx({"fg_text": fg, "bg_text": bg, "total": fg + 2.4 * bg}, rel=1e-12)


def test_prompt_loss_hand_computation():
    total, terms = prompt_loss(V_B, T, U, lambda2=0.02)
    bg = _mean([-math.log(s) for s in S_VB_U])
    text = _mean([math.log(s) for s in S_T_U])  # +log s, not -log(1 - s)
    assert text < 0
    assert total.item() == pytest.approx(bg + 0.02 * text, rel=1e-12)
    assert terms == pytest.approx({"bg_prompt": bg, "text_prompt": text, "total": bg + 0.02 * text}, rel=1e-12)


def test_refine_loss_hand_computation():
    total, terms = refine_loss(V_F, V_B, T, U, lambda1=2.4, lambda3=0.05)
    fg = _mean([-math.log(s) for s in S_VF_T])
    bg = _mean([-math.log(1 - s) for s in S_VB_T])
    fg_prompt = _mean([-math.log(1 - s) for s in S_VF_U])
    expected = fg + 2.4 * bg + 0.05 * fg_prompt
    assert total.item() == pytest.approx(expected, rel=1e-12)
    assert terms == pytest.approx({"fg_text": fg, "bg_text": bg, "fg_prompt": fg_prompt, "total": expected}, rel=1e-12)
    matched, _ = match_loss(V_F, V_B, T, lambda1=2.4)
    assert (total - matched).item() == pytest.approx(0.05 * fg_prompt, rel=1e-12)


def test_losses_reject_empty_pairs():
    empty = torch.zeros(0, 2)
    with pytest.raises(ValueError, match="positive pairs"):
        match_loss(empty, empty, empty, 2.4)
    with pytest.raises(ValueError, match="positive pairs"):
        prompt_loss(empty, empty, empty, 0.02)


def test_positive_pairs_row_major():
    labels = torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=torch.float32)
    image_index, class_index = positive_pairs(labels)
    assert image_index.dtype == class_index.dtype == torch.long
    assert image_index.tolist() == [0, 0, 1, 2]
    assert class_index.tolist() == [1, 2, 0, 2]
    assert [t.tolist() for t in positive_pairs(labels.bool())] == [[0, 0, 1, 2], [1, 2, 0, 2]]


def _bilinear_2x2(corners, size):
    """align_corners=True bilinear upsampling of [[a, b], [c, d]], written out."""
    (a, b), (c, d) = corners
    height, width = size
    out = []
    for i in range(height):
        y = i / (height - 1)
        out.append(
            [
                a * (1 - y) * (1 - x) + b * (1 - y) * x + c * y * (1 - x) + d * y * x
                for x in (j / (width - 1) for j in range(width))
            ]
        )
    return out


def test_soft_masks_upsample_and_normalise():
    fine_cam = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    fine_cam[0, 1] = _t([[1, 2], [3, 5]])
    fine_cam[1, 2] = _t([[-2, 0], [4, 0]])
    image_index, class_index = torch.tensor([0, 1]), torch.tensor([1, 2])
    eps = 0.1
    masks = soft_masks(fine_cam, image_index, class_index, (3, 3), eps)
    assert masks.shape == (2, 1, 3, 3)

    # 3x3 from 2x2 with align_corners=True: corners kept, edge midpoints and centre are averages.
    (a, b), (c, d) = (1, 2), (3, 5)
    up = [[a, (a + b) / 2, b], [(a + c) / 2, (a + b + c + d) / 4, (b + d) / 2], [c, (c + d) / 2, d]]
    expected = [[(v - 1) / (5 - 1 + eps) for v in row] for row in up]
    for got_row, want_row in zip(masks[0, 0].tolist(), expected):
        assert got_row == pytest.approx(want_row, rel=1e-12)

    for pair, corners in enumerate([((1, 2), (3, 5)), ((-2, 0), (4, 0))]):
        pair_mask = masks[pair, 0]
        values = [v for row in corners for v in row]
        value_range = max(values) - min(values)
        assert pair_mask.min().item() == 0.0
        assert pair_mask.max().item() == pytest.approx(value_range / (value_range + eps), rel=1e-12)

    # A non-square target, against the written-out bilinear formula.
    masks = soft_masks(fine_cam, image_index, class_index, (4, 5), eps)
    up = _bilinear_2x2(((-2, 0), (4, 0)), (4, 5))
    for got_row, want_row in zip(masks[1, 0].tolist(), up):
        assert got_row == pytest.approx([(v + 2) / (6 + eps) for v in want_row], rel=1e-12, abs=1e-15)


def test_masked_views_select_each_pairs_image():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    masks = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]]).repeat(3, 1, 1, 1)
    image_index = torch.tensor([1, 0, 1])
    fg, bg = masked_views(images, masks, image_index)
    assert fg.shape == bg.shape == (3, 3, 2, 2)
    torch.testing.assert_close(fg, images[image_index] * masks)
    torch.testing.assert_close(bg, images[image_index] * (1 - masks))
    torch.testing.assert_close(fg + bg, images[image_index])
    with pytest.raises(ValueError, match="masks"):
        masked_views(images, torch.ones(3, 1, 4, 4), image_index)


def test_gradient_reaches_the_cam_through_the_masks():
    torch.manual_seed(0)
    fine_cam = torch.rand(2, 3, 2, 2, requires_grad=True)
    images = torch.randn(2, 3, 8, 8)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]])
    encoder = torch.nn.Linear(3 * 8 * 8, 4)  # stands in for CLIP's image encoder
    encoder.requires_grad_(False)
    image_index, class_index = positive_pairs(labels)
    masks = soft_masks(fine_cam, image_index, class_index, (8, 8), eps=0.1)
    fg, bg = masked_views(images, masks, image_index)
    t = torch.randn(3, 4)[class_index]
    total, _ = match_loss(encoder(fg.flatten(1)), encoder(bg.flatten(1)), t, lambda1=2.4)
    total.backward()
    assert torch.isfinite(total)
    assert fine_cam.grad is not None and fine_cam.grad.abs().sum() > 0


def test_fp16_similarities_round_the_upper_clamp_to_one_as_the_release_does():
    # V_B's second pair has cosine 1.0: clamped to 0.9999 in fp32, which fp16 cannot hold
    assert clamped_cosine(V_B, T).tolist()[1] == pytest.approx(HIGH)
    half = clamped_cosine(V_B, T, dtype=torch.float16)
    assert half.dtype == torch.float16 and half.tolist()[1] == 1.0
    total, terms = match_loss(V_F, V_B, T, lambda1=2.4, dtype=torch.float16)
    assert math.isinf(terms["bg_text"]) and math.isinf(total.item())  # the GradScaler then skips the step
    finite, _ = match_loss(V_F, V_B, T, lambda1=2.4)
    assert math.isfinite(finite.item())
    # below the clamp, fp16 only rounds: the terms agree with fp32's to fp16's precision
    _, half_terms = prompt_loss(V_B, T, U, lambda2=0.02, dtype=torch.float16)
    _, full_terms = prompt_loss(V_B, T, U, lambda2=0.02)
    for name in ("bg_prompt", "text_prompt"):
        assert half_terms[name] == pytest.approx(full_terms[name], rel=2e-3)
        assert half_terms[name] != full_terms[name]
