"""Visual-side self-correlation (SVC): CLIP Surgery's second token path through the last blocks of a CLIP ViT.

In each surgery block the original path runs unchanged, and a new path (starting from the first surgery
block's input, without MLPs) adds the block's attention output with the q-k attention replaced by the mean
of the q-q, k-k and v-v self-correlations, summed over the heads as the reference does (``head_reduce``).
The result is the new path's patch tokens with the original path's CLS token, through ln_post and proj.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from wsss.clip.transformer import attention_parts, encode_image_tokens

__all__ = ["SurgeryOutput", "self_correlation", "surgery_forward", "layer_mix"]

_REDUCE = ("sum", "mean")


@dataclass
class SurgeryOutput:
    """Token features of the surgery forward and the attention maps of the blocks the CAA mixes."""

    features: torch.Tensor  # (B, 1+N, E): proj(ln_post(tokens)), row 0 the original path's CLS token
    attention: list[torch.Tensor]  # per block from `first_attention_block`: head-mean q-k attention (B, L, L)
    first_attention_block: int  # index of the first block in `attention`
    first_surgery_block: int  # blocks from here on are surgery blocks
    heads: int


def self_correlation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, reduce: str) -> torch.Tensor:
    """(softmax(s q q^T) + softmax(s k k^T) + softmax(s v v^T)) / 3 per head (H, L, L), summed or averaged over
    the heads: one (L, L) matrix."""
    if reduce not in _REDUCE:
        raise ValueError(f"head_reduce must be one of {_REDUCE}, got {reduce!r}")
    per_head = sum(torch.softmax(scale * x @ x.transpose(1, 2), dim=-1) for x in (q, k, v)) / 3
    return per_head.sum(0) if reduce == "sum" else per_head.mean(0)


def surgery_forward(model: CLIP, images: torch.Tensor, surgery_blocks: int = 5, head_reduce: str = "sum",
                    attention_blocks: int = 6) -> SurgeryOutput:
    """The surgery forward of (B, 3, H, W) images: features (B, 1+N, E) and the head-mean q-k attention of the
    last ``attention_blocks`` blocks (no grad)."""
    blocks = model.visual.transformer.resblocks
    n = len(blocks)
    if not 0 <= surgery_blocks <= n:
        raise ValueError(f"surgery_blocks must be in 0..{n}, got {surgery_blocks}")
    if not 1 <= attention_blocks <= n:
        raise ValueError(f"attention_blocks must be in 1..{n}, got {attention_blocks}")
    first_surgery, first_attention = n - surgery_blocks, n - attention_blocks
    x, maps = encode_image_tokens(model, images, upto_block=first_surgery,
                                  attention_blocks=range(first_attention, first_surgery))
    attention = list(maps[first_attention:first_surgery])
    heads = blocks[0].attn.num_heads
    with torch.no_grad():
        new = x.clone()
        for block in blocks[first_surgery:]:
            attn = block.attn
            normed = block.ln_1(x)
            original, qk, update = [], [], []
            for sequence in normed:
                parts = attention_parts(attn, sequence)
                qk.append(parts.probs.mean(0))
                original.append(F.linear(parts.out, attn.out_proj.weight, attn.out_proj.bias))
                values = parts.v.transpose(0, 1).reshape(sequence.shape)  # (L, D), the heads side by side
                correlation = self_correlation(parts.q, parts.k, parts.v, parts.scale, head_reduce)
                update.append(F.linear(correlation @ values, attn.out_proj.weight, attn.out_proj.bias))
            new = new + torch.stack(update)
            x = x + block.ls_1(torch.stack(original))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
            attention.append(torch.stack(qk))
        if surgery_blocks:
            new[:, 0] = x[:, 0]  # the CLS token of the original path
        else:
            new = x
        features = model.visual.ln_post(new) @ model.visual.proj
    return SurgeryOutput(features, attention, first_attention, first_surgery, heads)


def layer_mix(output_attention: list[torch.Tensor], first_attention_block: int, first_surgery_block: int,
              heads: int, surgery_head_reduce: str = "sum") -> torch.Tensor:
    """The CAA's attention: the mean over the given blocks' maps, where the surgery blocks count with the
    reference's head sum (x heads against the plain blocks' head mean) unless ``surgery_head_reduce`` is
    ``mean``; the CLS row and column are dropped: (B, N, N)."""
    if surgery_head_reduce not in ("sum", "mean"):
        raise ValueError(f"surgery_head_reduce must be sum or mean, got {surgery_head_reduce!r}")
    gain = heads if surgery_head_reduce == "sum" else 1
    weighted = [m * (gain if first_attention_block + i >= first_surgery_block else 1)
                for i, m in enumerate(output_attention)]
    return (sum(weighted) / len(weighted))[:, 1:, 1:]
