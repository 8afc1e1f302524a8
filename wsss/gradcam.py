"""Softmax-GradCAM on CLIP (CLIP-ES §5): one forward of the last block, then one backward per present class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from open_clip.model import CLIP

from .clip_model import encode_image_tokens, image_embedding_from_last_block, model_dtype, patch_size

__all__ = [
    "CamResult",
    "minmax_normalize",
    "cam_from_activations",
    "attention_block_indices",
    "layer_mean_attention",
    "softmax_gradcam",
]

_SCORES = ("softmax", "logit")


@dataclass
class CamResult:
    """Initial CAMs of one image plus the attention needed by CAA."""

    cams: torch.Tensor  # (K, h, w) float32 in [0, 1], per-class min-max
    attention_mean: torch.Tensor  # (N, N) float32, layer mean of head-averaged attention, CLS dropped
    logits: torch.Tensor  # (K+M,) float32: exp(logit_scale) * cos(image, text_j), present fg then bg
    grid_hw: tuple[int, int]  # (h, w) patch grid


def minmax_normalize(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-map min-max over the last two dims: (x - min) / (max(x - min) + eps), like scale_cam_image."""
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / (x.amax(dim=(-2, -1), keepdim=True) + eps)


def cam_from_activations(acts: torch.Tensor, grads: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """GradCAM from patch activations/gradients (K, N, D): min-max(ReLU(sum_k mean(grad_k) * A_k)), (K, h, w) fp32.

    The arithmetic mirrors the reference's numpy code on fp16 arrays: the channel weights are a mean
    accumulated in fp32 and rounded to the activation dtype, each product is rounded to that dtype, the
    channel sum is accumulated in fp32 and rounded once, and the map is cast to fp32 after the ReLU.
    For fp32 inputs all these roundings are no-ops.
    """
    if acts.shape != grads.shape or acts.ndim != 3:
        raise ValueError(f"acts and grads must both be (K, N, D), got {tuple(acts.shape)} and {tuple(grads.shape)}")
    h, w = grid_hw
    k, n, _ = acts.shape
    if n != h * w:
        raise ValueError(f"{n} patch tokens do not fit the grid {h}x{w}")
    dtype = acts.dtype
    alpha = grads.float().mean(dim=1).to(dtype)  # (K, D)
    weighted = alpha[:, None, :] * acts.to(dtype)
    cam = weighted.float().sum(dim=-1).to(dtype)
    cam = cam.float().clamp_min(0).reshape(k, h, w)
    # the reference normalises twice (per layer and after the layer aggregation); nearly idempotent
    return minmax_normalize(minmax_normalize(cam))


def attention_block_indices(n_blocks: int, layers: Sequence[int | None] = (-8, None)) -> list[int]:
    """Indices of the blocks whose attention maps the [start, stop] layer slice selects."""
    if len(layers) != 2:
        raise ValueError(f"attention layers must be a [start, stop] pair, got {layers!r}")
    return list(range(n_blocks))[slice(layers[0], layers[1])]


def layer_mean_attention(
    attentions: Sequence[torch.Tensor | None], layers: Sequence[int | None] = (-8, None)
) -> torch.Tensor:
    """Mean over the selected blocks of head-averaged attention maps (1+N, 1+N), CLS row/column dropped, fp32.

    Entries of blocks outside the selection may be None (maps that were never computed).
    """
    if len(layers) != 2:
        raise ValueError(f"attention layers must be a [start, stop] pair, got {layers!r}")
    chosen = list(attentions)[slice(layers[0], layers[1])]
    if not chosen:
        raise ValueError(f"attention layers {list(layers)} select none of {len(attentions)} blocks")
    if any(a is None for a in chosen):
        raise ValueError(f"attention layers {list(layers)} select blocks whose maps were not computed")
    stacked = torch.stack([a[1:, 1:] for a in chosen])
    # the reference averages the fp16 maps on the GPU (fp32 accumulation, one rounding), then goes to fp32
    return stacked.float().mean(dim=0).to(stacked.dtype).float()


def softmax_gradcam(
    model: CLIP,
    image: torch.Tensor,
    fg_text: torch.Tensor,
    bg_text: torch.Tensor,
    *,
    score: str = "softmax",
    use_background: bool = True,
    attn_layers: Sequence[int | None] = (-8, None),
) -> CamResult:
    """CLIP-ES softmax-GradCAM of one preprocessed image (3, H, W) for its K present classes.

    fg_text (K, E) holds the text embeddings of the image's present classes only (in label order) and
    bg_text (M, E) the background words (both are L2-renormalised in the model dtype, as the reference
    does). The model's weight dtype sets the precision: fp16 weights give the reference's manual half
    precision (no autocast, which would change the softmax/LayerNorm dtypes), fp32 weights give fp32.
    """
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {tuple(image.shape)}")
    if fg_text.ndim != 2 or fg_text.shape[0] == 0:
        raise ValueError(f"fg_text must be (K>0, E), got shape {tuple(fg_text.shape)}")
    if use_background and (bg_text is None or bg_text.ndim != 2 or bg_text.shape[1] != fg_text.shape[1]):
        raise ValueError("bg_text must be (M, E) with the same E as fg_text when use_background is True")

    device = model.visual.conv1.weight.device
    dtype = model_dtype(model)
    p = patch_size(model)
    grid_hw = (int(image.shape[-2]) // p, int(image.shape[-1]) // p)
    n_blocks = len(model.visual.transformer.resblocks)
    k = int(fg_text.shape[0])

    wanted = attention_block_indices(n_blocks, attn_layers)
    if not wanted:
        raise ValueError(f"attention layers {list(attn_layers)} select none of {n_blocks} blocks")
    # blocks whose maps the layer mean does not use run the fused attention (same numbers up to rounding)
    tokens, attentions = encode_image_tokens(model, image[None].to(device), upto_block=n_blocks - 1,
                                             attention_blocks=wanted)
    text = torch.cat([fg_text, bg_text], dim=0) if use_background else fg_text
    text = text.to(device=device, dtype=dtype)
    # the reference renormalises the (already unit) text features in the model dtype before the logits
    text = text / text.norm(dim=-1, keepdim=True)

    with torch.enable_grad():
        # The last block's forward is the same for every class, so it runs once; each class then gets its
        # own backward pass through the retained graph (w.r.t. the ln_1 output only: the parameters are
        # frozen). This equals the reference's K separate forward/backward passes.
        emb, ln1, attn_last = image_embedding_from_last_block(model, tokens, need_attention=n_blocks - 1 in wanted)
        feats = emb / emb.norm(dim=-1, keepdim=True)
        logits = (model.logit_scale.exp() * feats) @ text.t()  # (1, K+M), same operand order as the reference
        scores = logits.softmax(dim=-1) if score == "softmax" else logits
        grads = torch.cat(
            [torch.autograd.grad(scores[0, c], ln1, retain_graph=c < k - 1)[0] for c in range(k)]
        )  # (K, 1+N, D)

    acts = ln1.detach()[:, 1:, :].expand(k, -1, -1)
    cams = cam_from_activations(acts, grads[:, 1:, :], grid_hw)
    last = attn_last[0].detach() if attn_last is not None else None
    attention_mean = layer_mean_attention([a[0] if a is not None else None for a in attentions] + [last],
                                          attn_layers)
    return CamResult(
        cams=cams.cpu(),
        attention_mean=attention_mean.cpu(),
        logits=logits[0].detach().float().cpu(),
        grid_hw=grid_hw,
    )
