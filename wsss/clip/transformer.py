"""The CLIP-ES image path: interpolated position embeddings, per-block attention maps, the last block by hand.

The image path is kept separate from the text path on purpose (pitfall 9 of the spec): the reference code
chose between "text" and "image" by the sequence length, here the two never share a code path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection

import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from wsss.clip.factory import model_dtype, patch_size

__all__ = [
    "interpolate_pos_embed",
    "block_forward_with_attention",
    "block_forward",
    "add_head_sum",
    "AttentionParts",
    "attention_parts",
    "embedding_from_attention_output",
    "encode_image_tokens",
    "image_embedding_from_last_block",
]


def interpolate_pos_embed(pos: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (1+G*G, D) position embeddings to (1+h*w, D); the CLS row is kept as is."""
    if pos.ndim != 2:
        raise ValueError(f"pos must be (1+G*G, D), got shape {tuple(pos.shape)}")
    n, d = pos.shape
    g = int(round(math.sqrt(n - 1)))
    if g * g != n - 1:
        raise ValueError(f"pos has {n - 1} patch rows, not a square grid")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    grid = pos[1:].reshape(g, g, d).permute(2, 0, 1).unsqueeze(0)
    # interpolate in fp32 like the reference (its embedding parameter is fp32), cast afterwards
    out = F.interpolate(grid.float(), size=(h, w), mode="bilinear", align_corners=False)
    out = out[0].permute(1, 2, 0).reshape(h * w, d).to(pos.dtype)
    return torch.cat([pos[:1], out], dim=0)


def _check_block(block: torch.nn.Module) -> None:
    """Fail clearly on block types whose attention cannot return weights."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, torch.nn.MultiheadAttention):
        raise ValueError(f"unsupported attention block {type(block).__name__}: need nn.MultiheadAttention")
    if hasattr(block, "ln_1_kv"):
        raise ValueError("cross-attention blocks are not supported")


def block_forward_with_attention(
    block: torch.nn.Module, x: torch.Tensor, ln1: torch.Tensor | None = None, *, average_heads: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One open_clip residual block on (B, L, D) tokens, also returning head-averaged attention (B, L, L).

    With average_heads=False the attention comes per head, (B, H, L, L).
    """
    _check_block(block)
    a = block.ln_1(x) if ln1 is None else ln1
    # Without grad (eval mode, batch-first), nn.MultiheadAttention takes its native path here, where one
    # in-place softmax serves both the output and the map; asking for per-head maps skips its head mean.
    if block.attn.batch_first:
        out, weights = block.attn(a, a, a, need_weights=True, average_attn_weights=average_heads)
    else:
        at = a.transpose(0, 1)
        out, weights = block.attn(at, at, at, need_weights=True, average_attn_weights=average_heads)
        out = out.transpose(0, 1)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights


def add_head_sum(total: torch.Tensor, weights: torch.Tensor) -> None:
    """total (B, L, L) += per-head attention (B, H, L, L) summed over the heads, in place, as one product."""
    b, h = weights.shape[:2]
    ones = torch.ones(b, 1, h, dtype=total.dtype, device=total.device)
    # a (1 x H) @ (H x L*L) product per image: a single pass over the maps, no temporary head mean
    total.view(b, 1, -1).baddbmm_(ones, weights.reshape(b, h, -1).to(total.dtype))


def block_forward(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One open_clip residual block on (B, L, D) tokens through its own forward (fused attention, no map)."""
    if block.attn.batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


@dataclass
class AttentionParts:
    """The pieces of one self-attention of a single token sequence, kept for a hand-written backward."""

    q: torch.Tensor  # (H, L, hd) query projections (not yet scaled by 1/sqrt(hd))
    k: torch.Tensor  # (H, L, hd)
    v: torch.Tensor  # (H, L, hd)
    probs: torch.Tensor  # (H, L, L) softmax attention per head, rows = queries
    out: torch.Tensor  # (L, D) attention output before the out-projection, heads concatenated

    @property
    def scale(self) -> float:
        """The factor applied to q before q k^T."""
        return math.sqrt(1.0 / self.q.shape[-1])


def attention_parts(attn: torch.nn.MultiheadAttention, x: torch.Tensor) -> AttentionParts:
    """Self-attention of one (L, D) sequence computed explicitly, with q, k, v and the per-head softmax.

    The operations are those of nn.MultiheadAttention's need_weights branch (packed in-projection, q
    scaled by 1/sqrt(head_dim) before q k^T, softmax, probs @ v); the out-projection is left to the caller.
    """
    if not isinstance(attn, torch.nn.MultiheadAttention):
        raise ValueError(f"unsupported attention {type(attn).__name__}: need nn.MultiheadAttention")
    if x.ndim != 2:
        raise ValueError(f"x must be one (L, D) sequence, got shape {tuple(x.shape)}")
    if attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn:
        raise ValueError("attention with separate q/k/v projections, bias_k/bias_v or add_zero_attn is not supported")
    n, d = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, 3, heads, d // heads).permute(1, 2, 0, 3).unbind(0)  # (H, L, hd) views, no copy
    scores = torch.bmm(q * math.sqrt(1.0 / q.shape[-1]), k.transpose(1, 2))
    # in place, like the native attention kernel (one (H, L, L) buffer), unless autograd needs the graph
    probs = torch.softmax(scores, dim=-1) if scores.requires_grad else torch.softmax(scores, dim=-1, out=scores)
    out = torch.bmm(probs, v).transpose(0, 1).reshape(n, d)
    return AttentionParts(q, k, v, probs, out)


def _embed_patches(model: CLIP, images: torch.Tensor, position_dtype: torch.dtype | None = None) -> torch.Tensor:
    """conv1 patches + CLS + interpolated position embeddings + ln_pre: (B, 1+N, D).

    position_dtype rounds the interpolated table (CLS row included) before it is added, as the official
    CLIP-ES code does: its table comes back as fp16 on every forward, also on the CPU where tokens are fp32.
    """
    visual = model.visual
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    p = patch_size(model)
    hh, ww = images.shape[-2:]
    if hh % p or ww % p:
        raise ValueError(f"image size {hh}x{ww} is not a multiple of the patch size {p}")
    dtype = model_dtype(model)
    # the residual stream stays in the weights' dtype; under autocast only the products are rounded
    x = visual.conv1(images.to(dtype)).to(dtype)
    b, d = x.shape[:2]
    x = x.reshape(b, d, -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, d).expand(b, 1, d)
    x = torch.cat([cls, x], dim=1)
    pos = interpolate_pos_embed(visual.positional_embedding, (hh // p, ww // p))
    if position_dtype is not None:
        pos = pos.to(position_dtype)
    x = x + pos.to(x.dtype)
    return visual.ln_pre(x)


def encode_image_tokens(
    model: CLIP,
    images: torch.Tensor,
    *,
    upto_block: int,
    attention_blocks: Collection[int] | None = None,
    attention_sum: torch.Tensor | None = None,
    position_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Tokens after blocks 0..upto_block-1 (no grad) and each block's head-averaged attention (B, 1+N, 1+N).

    attention_blocks (indices into the model's blocks; None = all) limits the maps to those needed: the
    other blocks run open_clip's fused attention and give None in the list (same numbers up to rounding).
    With attention_sum, a (B, 1+N, 1+N) buffer, the selected blocks' maps are instead added to it summed
    over heads (add_head_sum) and also give None: cheaper than per-block head means when only their
    layer mean is wanted (the sum's divisor is heads x blocks). position_dtype: see _embed_patches.
    """
    blocks = model.visual.transformer.resblocks
    if not 0 <= upto_block <= len(blocks):
        raise ValueError(f"upto_block must be in [0, {len(blocks)}], got {upto_block}")
    n = len(blocks)
    if attention_blocks is not None and any(not -n <= int(i) < n for i in attention_blocks):
        raise ValueError(f"attention_blocks must index the {n} blocks, got {sorted(attention_blocks)}")
    wanted = set(range(n)) if attention_blocks is None else {int(i) % n for i in attention_blocks}
    attns: list[torch.Tensor | None] = []
    with torch.no_grad():
        x = _embed_patches(model, images, position_dtype)
        for i, block in enumerate(blocks[:upto_block]):
            if i not in wanted:
                x, w = block_forward(block, x), None
            elif attention_sum is None:
                x, w = block_forward_with_attention(block, x)
            else:
                x, per_head = block_forward_with_attention(block, x, average_heads=False)
                add_head_sum(attention_sum, per_head)
                w = None
            attns.append(w)
    return x, attns


def image_embedding_from_last_block(
    model: CLIP, tokens: torch.Tensor, *, need_attention: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Last block + head: (proj(ln_post(mean of patch tokens)) (B, E), ln_1 output (B, 1+N, D), attention).

    With grad enabled the ln_1 output is part of the autograd graph (a fresh leaf if the tokens do not
    require grad), so torch.autograd.grad(score, ln1) gives the GradCAM gradients. Without need_attention
    the block uses nn.MultiheadAttention's fused path and the attention is None.
    """
    block = model.visual.transformer.resblocks[-1]
    _check_block(block)
    ln1 = block.ln_1(tokens)
    if torch.is_grad_enabled() and not ln1.requires_grad:
        ln1 = ln1.detach().requires_grad_(True)
    if need_attention:
        x, attn = block_forward_with_attention(block, tokens, ln1=ln1)
    else:
        at = ln1 if block.attn.batch_first else ln1.transpose(0, 1)
        out = block.attn(at, at, at, need_weights=False)[0]
        out = out if block.attn.batch_first else out.transpose(0, 1)
        x = tokens + block.ls_1(out)
        x, attn = x + block.ls_2(block.mlp(block.ln_2(x))), None
    return _pool_and_project(model, x), ln1, attn


def _pool_and_project(model: CLIP, x: torch.Tensor) -> torch.Tensor:
    """CLIP-ES image embedding from the last block's output tokens: proj(mean of ln_post(patch tokens))."""
    x = model.visual.ln_post(x)
    # CLIP-ES pools the patch tokens; the CLS token is not used
    return x[:, 1:, :].mean(dim=1) @ model.visual.proj


def embedding_from_attention_output(model: CLIP, tokens: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of the last block and the head from its attention output: (B, L, D) -> embedding (B, E).

    tokens are the last block's input (B, L, D) and attn_out its attention output before the
    out-projection; differentiable in attn_out, so the gradients below the attention can be taken by hand.
    """
    block = model.visual.transformer.resblocks[-1]
    attn = block.attn
    x = tokens + block.ls_1(F.linear(attn_out, attn.out_proj.weight, attn.out_proj.bias))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return _pool_and_project(model, x)
