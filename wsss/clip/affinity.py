"""Class-aware attention-based affinity (CAA, CLIP-ES §6): Sinkhorn affinity, CAM box masks, refinement."""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
import torch

from wsss.clip.maps import minmax_normalize

__all__ = ["BoxMask", "sinkhorn_normalize", "sinkhorn_affinity", "box_mask", "refine_cams"]

_BORDERS = ("faithful", "inclusive")
_EMPTY = ("zeros", "unrefined")


class BoxMask(NamedTuple):
    """Union of CAM bounding boxes at patch resolution."""

    mask: np.ndarray  # (h, w) bool
    n_boxes: int  # number of contours found (0 when empty)
    empty: bool  # True when no contour exists (the reference's [0, 0, 0, 0] fallback)


def sinkhorn_normalize(attention: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """Sinkhorn-style normalisation in fp32 without epsilon: `rounds` x (divide by column sums, then by row sums)."""
    d = torch.as_tensor(attention).float()
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"attention must be a square (N, N) matrix, got shape {tuple(d.shape)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for r in range(rounds):
        col = d.sum(dim=0, keepdim=True)
        # the method uses no epsilon (spec pitfall 5): a zero sum is an error, not something to paper over
        if not torch.all(col != 0):
            bad = torch.nonzero(col[0] == 0).flatten()[:5].tolist()
            raise ValueError(f"sinkhorn round {r + 1}: attention has zero column sums (columns {bad})")
        d = d / col
        row = d.sum(dim=1, keepdim=True)
        if not torch.all(row != 0):
            bad = torch.nonzero(row[:, 0] == 0).flatten()[:5].tolist()
            raise ValueError(f"sinkhorn round {r + 1}: attention has zero row sums (rows {bad})")
        d = d / row
    return d


def sinkhorn_affinity(attention: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """Symmetric CAA affinity A = (D + D^T) / 2 with D = sinkhorn_normalize(attention, rounds)."""
    d = sinkhorn_normalize(attention, rounds)
    return (d + d.transpose(0, 1)) / 2


def box_mask(cam: np.ndarray | torch.Tensor, threshold: float, border: str = "faithful") -> BoxMask:
    """Union of bounding boxes of all contours of uint8(cam*255) > int(threshold*max); CLIP-ES §6 step 5."""
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {_BORDERS}, got {border!r}")
    if isinstance(cam, torch.Tensor):
        cam = cam.detach().cpu().numpy()
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must be (h, w), got shape {cam.shape}")
    h_p, w_p = cam.shape
    # float32 product and truncating cast, exactly like (scoremap * 255).astype(np.uint8)
    q = (cam * np.float32(255)).astype(np.uint8)
    thresh = int(threshold * np.max(q))
    _, binary = cv2.threshold(q, thresh, 255, cv2.THRESH_BINARY)  # strict: q > thresh
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    mask = np.zeros((h_p, w_p), dtype=bool)
    if len(contours) == 0:
        return BoxMask(mask, 0, True)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if border == "faithful":
            # reference corners: clipped to w_p-1 / h_p-1 and filled end-exclusive, so a box touching
            # the right/bottom edge loses its last column/row (pitfall 2)
            mask[y : min(y + h, h_p - 1), x : min(x + w, w_p - 1)] = True
        else:
            mask[y : y + h, x : x + w] = True
    return BoxMask(mask, len(contours), False)


def refine_cams(
    cams: torch.Tensor,
    affinity: torch.Tensor,
    *,
    power: int = 2,
    threshold: float,
    border: str = "faithful",
    empty_box: str = "zeros",
    return_empty: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """CAA refinement: m_c = (A^power with columns outside B_c zeroed) @ vec(M_c), then min-max; (K, h, w) fp32.

    empty_box="zeros" keeps the reference's all-zero map when no box exists; "unrefined" returns M_c
    instead. With return_empty the per-class bool array of empty boxes is returned too (for logging).
    """
    if empty_box not in _EMPTY:
        raise ValueError(f"empty_box must be one of {_EMPTY}, got {empty_box!r}")
    if power < 1:
        raise ValueError(f"power must be >= 1, got {power}")
    cams = torch.as_tensor(cams).float()
    if cams.ndim != 3:
        raise ValueError(f"cams must be (K, h, w), got shape {tuple(cams.shape)}")
    k, h, w = cams.shape
    a = torch.as_tensor(affinity).float().to(cams.device)
    if a.shape != (h * w, h * w):
        raise ValueError(f"affinity must be ({h * w}, {h * w}) for a {h}x{w} grid, got {tuple(a.shape)}")
    trans = torch.linalg.matrix_power(a, power)

    masks = np.zeros((k, h * w), dtype=np.float32)
    empty = np.zeros(k, dtype=bool)
    for c in range(k):
        bm = box_mask(cams[c], threshold, border)
        masks[c] = bm.mask.reshape(-1)
        empty[c] = bm.empty
    b = torch.from_numpy(masks).to(cams.device)
    # (T * 1 b^T) vec(M) == T (b * vec(M)): columns outside the box are zeroed, rows are not renormalised
    masked = b * cams.reshape(k, h * w)
    refined = (trans @ masked.t()).t().reshape(k, h, w)
    refined = minmax_normalize(refined)
    if empty_box == "unrefined" and empty.any():
        refined[torch.from_numpy(empty).to(cams.device)] = cams[torch.from_numpy(empty).to(cams.device)]
    return (refined, empty) if return_empty else refined
