"""Tests for wsss.clip.affinity: Sinkhorn affinity, CAM box masks (faithful vs inclusive border) and CAA refinement."""

import numpy as np
import pytest
import torch

from wsss.clip.affinity import box_mask, refine_cams, sinkhorn_affinity, sinkhorn_normalize


def q_value(q):
    """A CAM value that quantises to exactly q under uint8(cam * 255)."""
    return (q + 0.5) / 255.0


def test_sinkhorn_one_round_known_example():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # columns: [[1/4, 2/6], [3/4, 4/6]]; rows then give [[3/7, 4/7], [9/17, 8/17]]
    d = sinkhorn_normalize(w, rounds=1)
    assert torch.allclose(d, torch.tensor([[3 / 7, 4 / 7], [9 / 17, 8 / 17]]), atol=1e-6)
    a = sinkhorn_affinity(w, rounds=1)
    off = (4 / 7 + 9 / 17) / 2
    assert torch.allclose(a, torch.tensor([[3 / 7, off], [off, 8 / 17]]), atol=1e-6)


def test_sinkhorn_rows_sum_to_one_and_symmetric():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(12, 12, generator=g).softmax(-1)[1:, 1:]  # like attention with the CLS row/col dropped
    d = sinkhorn_normalize(w, rounds=3)
    assert torch.allclose(d.sum(1), torch.ones(11), atol=1e-6)
    # three rounds are the same as one round applied three times
    assert torch.allclose(d, sinkhorn_normalize(sinkhorn_normalize(sinkhorn_normalize(w, 1), 1), 1))
    a = sinkhorn_affinity(w)
    assert a.dtype == torch.float32
    assert torch.equal(a, a.t())
    assert torch.allclose(a, (d + d.t()) / 2)
    # many rounds converge to a doubly stochastic matrix
    assert torch.allclose(sinkhorn_normalize(w, 200).sum(0), torch.ones(11), atol=1e-4)


def test_sinkhorn_zero_column_is_an_error():
    w = torch.rand(4, 4)
    w[:, 2] = 0
    with pytest.raises(ValueError, match="zero column"):
        sinkhorn_affinity(w)
    with pytest.raises(ValueError, match="square"):
        sinkhorn_affinity(torch.rand(3, 4))


def test_box_touching_right_edge():
    cam = np.zeros((4, 6), dtype=np.float32)
    cam[1:3, 4:6] = 1.0
    faithful = box_mask(cam, 0.4, "faithful")
    inclusive = box_mask(cam, 0.4, "inclusive")
    expect = np.zeros((4, 6), dtype=bool)
    expect[1:3, 4:6] = True
    assert np.array_equal(inclusive.mask, expect)
    expect[:, 5] = False  # faithful drops the last column
    assert np.array_equal(faithful.mask, expect)
    assert faithful.n_boxes == inclusive.n_boxes == 1 and not faithful.empty


def test_box_touching_bottom_edge():
    cam = np.zeros((5, 5), dtype=np.float32)
    cam[3:5, 1:3] = 0.8
    faithful = box_mask(torch.from_numpy(cam), 0.4, "faithful").mask
    inclusive = box_mask(cam, 0.4, "inclusive").mask
    assert inclusive[3:5, 1:3].all() and inclusive.sum() == 4
    assert faithful[3, 1:3].all() and faithful.sum() == 2 and not faithful[4].any()


def test_two_blobs_union_of_boxes():
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[1, 1], cam[2, 2] = 1.0, 0.9  # diagonal neighbours: one 8-connected blob, box rows/cols 1..2
    cam[5:7, 5] = 0.7
    res = box_mask(cam, 0.5, "faithful")
    expect = np.zeros((8, 8), dtype=bool)
    expect[1:3, 1:3] = True
    expect[5:7, 5:6] = True
    assert res.n_boxes == 2
    assert np.array_equal(res.mask, expect)
    assert np.array_equal(box_mask(cam, 0.5, "inclusive").mask, expect)  # no box touches an edge


def test_empty_cam_gives_empty_mask():
    res = box_mask(np.zeros((3, 4), dtype=np.float32), 0.4, "faithful")
    assert res.empty and res.n_boxes == 0 and not res.mask.any()
    # values below 1/255 truncate to 0 as well
    assert box_mask(np.full((3, 4), 0.003, dtype=np.float32), 0.4).empty


def test_threshold_is_strict_on_quantised_values():
    cam = np.zeros((3, 7), dtype=np.float32)
    cam[1, 0] = 1.0  # q = 255 -> threshold int(0.4 * 255) = 102
    cam[1, 3] = q_value(102)  # equal to the threshold: excluded
    cam[1, 5] = q_value(103)  # above: included
    res = box_mask(cam, 0.4, "inclusive")
    assert res.n_boxes == 2
    assert res.mask[1, 0] and res.mask[1, 5] and not res.mask[1, 3]
    # uint8 truncation: 0.9999 -> 254, so the threshold is int(0.4 * 254) = 101 and q=102 gets in
    cam[1, 0] = 0.9999
    assert box_mask(cam, 0.4, "inclusive").mask[1, 3]


def test_faithful_is_inclusive_minus_last_row_and_column():
    rng = np.random.default_rng(0)
    for _ in range(20):
        cam = rng.random((7, 9)).astype(np.float32) ** 3
        inc = box_mask(cam, 0.4, "inclusive").mask
        fai = box_mask(cam, 0.4, "faithful").mask
        above = (cam * np.float32(255)).astype(np.uint8) > int(
            0.4 * int((cam * np.float32(255)).astype(np.uint8).max())
        )
        assert inc[above].all()  # every above-threshold pixel lies in some box
        cut = inc.copy()
        cut[-1, :] = False
        cut[:, -1] = False
        assert np.array_equal(fai, cut)


def _direct(cams, aff, power, threshold, border):
    t = np.linalg.matrix_power(aff.numpy().astype(np.float64), power)
    out = []
    for cam in cams:
        b = box_mask(cam, threshold, border).mask.reshape(-1).astype(np.float64)
        m = (t * b[None, :]) @ cam.numpy().reshape(-1).astype(np.float64)
        m = m - m.min()
        out.append((m / (m.max() + 1e-7)).reshape(cam.shape))
    return torch.tensor(np.stack(out), dtype=torch.float32)


@pytest.mark.parametrize("power", [1, 2, 3])
@pytest.mark.parametrize("border", ["faithful", "inclusive"])
def test_refine_equals_direct_matrix_formula(power, border):
    g = torch.Generator().manual_seed(power)
    h, w = 4, 5
    # a peaked affinity (as attention is) keeps A^power well conditioned for the min-max comparison
    aff = sinkhorn_affinity(torch.rand(h * w, h * w, generator=g) + 4 * torch.eye(h * w))
    cams = torch.rand(3, h, w, generator=g) ** 2
    cams = (cams - cams.amin((1, 2), keepdim=True)) / cams.amax((1, 2), keepdim=True)
    out = refine_cams(cams, aff, power=power, threshold=0.4, border=border)
    assert out.shape == (3, h, w) and out.dtype == torch.float32
    assert torch.allclose(out, _direct(cams, aff, power, 0.4, border), atol=1e-5)


def test_refine_hand_example():
    # 1x3 grid, identity-like affinity: only the boxed column mass survives
    aff = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    cams = torch.tensor([[[1.0, 0.2, 0.0]]])
    # box: q = (255, 51, 0), threshold int(0.4*255)=102 -> only x=0; inclusive box covers column 0
    out = refine_cams(cams, aff, power=1, threshold=0.4, border="inclusive")
    # m = A[:, 0] * 1.0 = (0.5, 0.5, 0) -> min-max (1, 1, 0)
    assert torch.allclose(out, torch.tensor([[[1.0, 1.0, 0.0]]]), atol=1e-6)


def test_refine_empty_box_modes():
    aff = sinkhorn_affinity(torch.rand(6, 6, generator=torch.Generator().manual_seed(9)))
    cams = torch.zeros(2, 2, 3)
    cams[1] = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.1, 0.0]])
    zeros, empty = refine_cams(cams, aff, threshold=0.4, empty_box="zeros", return_empty=True)
    assert empty.tolist() == [True, False]
    assert torch.equal(zeros[0], torch.zeros(2, 3))
    unref = refine_cams(cams, aff, threshold=0.4, empty_box="unrefined")
    assert torch.equal(unref[0], cams[0]) and torch.equal(unref[1], zeros[1])
    # a non-zero CAM whose values all truncate to 0 is where "unrefined" differs from "zeros"
    cams[0] = 0.002
    cams[0, 0, 0] = 0.003
    unref = refine_cams(cams, aff, threshold=0.4, empty_box="unrefined")
    assert torch.equal(unref[0], cams[0])
    with pytest.raises(ValueError, match="affinity"):
        refine_cams(cams, torch.eye(5), threshold=0.4)
    with pytest.raises(ValueError, match="empty_box"):
        refine_cams(cams, aff, threshold=0.4, empty_box="skip")
