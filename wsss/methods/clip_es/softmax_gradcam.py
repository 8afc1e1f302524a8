"""Softmax-GradCAM on CLIP (CLIP-ES §5): one forward of the last block, then the per-class gradients."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from open_clip.model import CLIP

from wsss.clip.maps import minmax_normalize
from wsss.clip.factory import model_dtype, patch_size
from wsss.clip.transformer import (
    AttentionParts,
    add_head_sum,
    attention_parts,
    embedding_from_attention_output,
    encode_image_tokens,
    image_embedding_from_last_block,
)

__all__ = [
    "CamResult",
    "minmax_normalize",
    "cam_from_channel_weights",
    "cam_from_activations",
    "attention_block_indices",
    "layer_mean_attention",
    "patch_sum_of_input_gradients",
    "softmax_gradcam",
    "softmax_gradcam_batch",
    "PRECISIONS",
    "autocast_precision",
]

_SCORES = ("softmax", "logit")
_ARITHMETIC = ("auto", "reference", "fast")
# faithful: the official code's roundings (fp16 position table; fp16 weights where the CLIP is loaded in fp16);
# fp32: plain fp32; bf16 / fp16: autocast of fp32 weights (fast modes; fp16 only on CUDA)
PRECISIONS = ("faithful", "fp32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CamResult:
    """Initial CAMs of one image plus the attention needed by CAA."""

    cams: torch.Tensor  # (K, h, w) float32 in [0, 1], per-class min-max
    attention_mean: torch.Tensor  # (N, N) float32, layer mean of head-averaged attention, CLS dropped
    logits: torch.Tensor  # (K+M,) float32: exp(logit_scale) * cos(image, text_j), present fg then bg
    grid_hw: tuple[int, int]  # (h, w) patch grid


def cam_from_channel_weights(acts: torch.Tensor, alpha: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """GradCAM from patch activations (N, D) or (K, N, D) and channel weights (K, D): (K, h, w) fp32 in [0, 1].

    Each product is rounded to the activation dtype and the channel sum is accumulated in fp32 and rounded
    once, as the reference's numpy code does on fp16 arrays; the map is cast to fp32 after the ReLU.
    """
    h, w = grid_hw
    if alpha.ndim != 2 or acts.ndim not in (2, 3) or acts.shape[-1] != alpha.shape[-1]:
        raise ValueError(
            f"acts must be (N, D) or (K, N, D) and alpha (K, D), got {tuple(acts.shape)} " f"and {tuple(alpha.shape)}"
        )
    k, n = alpha.shape[0], acts.shape[-2]
    if n != h * w:
        raise ValueError(f"{n} patch tokens do not fit the grid {h}x{w}")
    dtype = acts.dtype
    weighted = alpha.to(dtype)[:, None, :] * acts  # (K, N, D); (N, D) activations broadcast over classes
    cam = weighted.float().sum(dim=-1).to(dtype)
    cam = cam.float().clamp_min(0).reshape(k, h, w)
    # the reference normalises twice (per layer and after the layer aggregation); nearly idempotent
    return minmax_normalize(minmax_normalize(cam))


def cam_from_activations(acts: torch.Tensor, grads: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """GradCAM from patch activations/gradients (K, N, D): min-max(ReLU(sum_k mean(grad_k) * A_k)), (K, h, w) fp32.

    The arithmetic mirrors the reference's numpy code on fp16 arrays: the channel weights are a mean
    accumulated in fp32 and rounded to the activation dtype, then cam_from_channel_weights.
    For fp32 inputs all these roundings are no-ops.
    """
    if acts.shape != grads.shape or acts.ndim != 3:
        raise ValueError(f"acts and grads must both be (K, N, D), got {tuple(acts.shape)} and {tuple(grads.shape)}")
    h, w = grid_hw
    if acts.shape[1] != h * w:
        raise ValueError(f"{acts.shape[1]} patch tokens do not fit the grid {h}x{w}")
    alpha = grads.float().mean(dim=1).to(acts.dtype)  # (K, D)
    return cam_from_channel_weights(acts, alpha, grid_hw)


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


def patch_sum_of_input_gradients(
    parts: AttentionParts, d_out: torch.Tensor, in_proj_weight: torch.Tensor
) -> torch.Tensor:
    """Sum over the patch tokens (all but token 0) of the gradients w.r.t. the attention input, (K, D).

    d_out (K, L, D) holds K gradients w.r.t. the attention output O = P v (before the out-projection).
    Only the patch sums are formed, never the (L, L) gradient of the attention or the (K, L, D) input
    gradients. Per head, with dP[n, m] = dO_n . v_m, r_n = sum_m P[n, m] dP[n, m] = dO_n . O_n and the
    softmax gradient dS = P * (dP - r), summing over patch rows n / patch columns m gives
        col_m = sum_n dS[n, m] = v_m . (sum_n P[n, m] dO_n) - sum_n P[n, m] r_n
        row_n = sum_m dS[n, m] = -dS[n, 0]                     (every row of dS sums to 0)
        sum dq = s * col @ k,  sum dk = s * row @ q,  sum dv = (sum_m P[:, m]) @ dO   (s = 1/sqrt(hd))
    and sum_n dx_n = [sum dq | sum dk | sum dv] @ W_in. Exact up to float summation order.
    """
    q, k, v, probs = parts.q, parts.k, parts.v, parts.probs
    heads, n_tok, hd = q.shape
    n_cls = d_out.shape[0]
    if d_out.shape != (n_cls, n_tok, heads * hd):
        raise ValueError(f"d_out must be (K, {n_tok}, {heads * hd}), got {tuple(d_out.shape)}")
    d_o = d_out.reshape(n_cls, n_tok, heads, hd).permute(2, 0, 1, 3)  # (H, K, L, hd)
    out = parts.out.view(n_tok, heads, hd).transpose(0, 1)  # (H, L, hd)
    r = (d_o * out[:, None]).sum(dim=-1)  # (H, K, L)
    row = probs[:, None, :, 0] * (r - (d_o * v[:, None, None, 0]).sum(dim=-1))  # -dS[n, 0]
    # for every key m and class: sum over patch queries n of P[n, m] * [dO_n | r_n], one batched product
    rhs = torch.cat([d_o, r[..., None]], dim=-1)[:, :, 1:].transpose(1, 2).reshape(heads, n_tok - 1, -1)
    w = torch.bmm(probs[:, 1:, :].transpose(1, 2), rhs).view(heads, n_tok, n_cls, hd + 1)
    col = (w[..., :hd] * v[:, :, None, :]).sum(dim=-1) - w[..., hd]  # (H, L, K)
    dq = torch.bmm(col.transpose(1, 2), k) * parts.scale  # (H, K, hd)
    dk = torch.bmm(row, q) * parts.scale
    dv = (d_o * probs[:, :, 1:].sum(dim=-1)[:, None, :, None]).sum(dim=2)
    d_qkv = torch.cat([t.transpose(0, 1).reshape(n_cls, heads * hd) for t in (dq, dk, dv)], dim=-1)  # (K, 3D)
    return d_qkv @ in_proj_weight


def _scores(model: CLIP, emb: torch.Tensor, text: torch.Tensor, score: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, T), scores (B, T)): exp(logit_scale) * cos(image, text), softmax over T for "softmax"."""
    feats = emb / emb.norm(dim=-1, keepdim=True)
    logits = (model.logit_scale.exp() * feats) @ text.t()  # same operand order as the reference
    return logits, (logits.softmax(dim=-1) if score == "softmax" else logits)


def _weights_reference(
    model: CLIP, tokens: torch.Tensor, text: torch.Tensor, k: int, score: str, need_attention: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(alpha (K, D), patch activations (N, D), logits (T,), last block's head-mean attention or None).

    The gradients w.r.t. the ln_1 output are formed for every token, one backward per class through the
    retained graph of the single forward, and averaged in the reference's arithmetic (fp16-faithful).
    """
    with torch.enable_grad():
        emb, ln1, attn = image_embedding_from_last_block(model, tokens, need_attention=need_attention)
        logits, scores = _scores(model, emb, text, score)
        # w.r.t. the ln_1 output only (the parameters are frozen): the same gradients as the reference's
        # K separate forward/backward passes
        grads = torch.cat([torch.autograd.grad(scores[0, c], ln1, retain_graph=c < k - 1)[0] for c in range(k)])
    acts = ln1.detach()[0, 1:]
    # the reference's mean of the (fp16) per-token gradients: fp32 accumulation, rounded to the dtype
    alpha = grads[:, 1:].float().mean(dim=1).to(acts.dtype)
    return alpha, acts, logits.detach()[0], (attn.detach()[0] if attn is not None else None)


def _vjp_per_class(vjp_fn, cotangents: torch.Tensor) -> torch.Tensor:
    """vjp_fn applied to each cotangent (one per class), stacked: one vmapped backward pass."""
    if torch.is_autocast_enabled(cotangents.device.type):
        # vmap cannot batch the backward of autocast's casts (dtype mismatch); K passes of the small head
        return torch.stack([vjp_fn(cotangent)[0] for cotangent in cotangents])
    return torch.vmap(vjp_fn)(cotangents)[0]


def _weights_fast(
    model: CLIP, tokens: torch.Tensor, text: torch.Tensor, k: int, score: str, attention_sum: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha (K, D), patch activations (N, D), logits (T,)); the same numbers up to float summation order.

    The K gradients w.r.t. the attention output come from one vectorised backward (torch.func.vjp + vmap);
    below the attention only their patch sums are formed by hand (patch_sum_of_input_gradients), which
    skips the per-class backward through the (H, L, L) maps and the in-projection. The last block's
    per-head attention is added to attention_sum when given.
    """
    block = model.visual.transformer.resblocks[-1]
    with torch.no_grad():
        ln1 = block.ln_1(tokens)
        parts = attention_parts(block.attn, ln1[0])
        if attention_sum is not None:
            add_head_sum(attention_sum, parts.probs[None])

    def class_scores(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, scores = _scores(model, embedding_from_attention_output(model, tokens, out), text, score)
        return scores[0, :k], logits[0]

    # torch.func.vjp differentiates even under an outer no_grad; vmap runs the K backward passes as one
    scores, vjp_fn, logits = torch.func.vjp(class_scores, parts.out[None], has_aux=True)
    d_out = _vjp_per_class(vjp_fn, torch.eye(k, dtype=scores.dtype, device=scores.device))
    with torch.no_grad():
        alpha = patch_sum_of_input_gradients(parts, d_out[:, 0], block.attn.in_proj_weight) / (ln1.shape[1] - 1)
    return alpha, ln1[0, 1:], logits.detach()


def autocast_precision(precision: str) -> bool:
    """True for the fast modes, which autocast fp32 weights (the CLIP must be loaded in fp32 for them)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision in _AUTOCAST


def _precision_context(precision: str, device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """torch.autocast for the fast modes, nothing for faithful / fp32."""
    if not autocast_precision(precision):
        return contextlib.nullcontext()
    if dtype != torch.float32:
        raise ValueError(f"precision {precision!r} autocasts fp32 weights, but the CLIP is {dtype}; load it in fp32")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' is CUDA autocast; on {device.type} use 'bf16'")
    return torch.autocast(device.type, dtype=_AUTOCAST[precision])


def softmax_gradcam(
    model: CLIP,
    image: torch.Tensor,
    fg_text: torch.Tensor,
    bg_text: torch.Tensor,
    *,
    score: str = "softmax",
    use_background: bool = True,
    attn_layers: Sequence[int | None] = (-8, None),
    arithmetic: str = "auto",
    precision: str = "fp32",
) -> CamResult:
    """CLIP-ES softmax-GradCAM of one preprocessed image (3, H, W) for its K present classes.

    fg_text (K, E) holds the text embeddings of the image's present classes only (in label order) and
    bg_text (M, E) the background words (both are L2-renormalised in the model dtype, as the reference
    does). The model's weight dtype sets the precision: fp16 weights give the reference's manual half
    precision (no autocast, which would change the softmax/LayerNorm dtypes), fp32 weights give fp32.

    arithmetic: "reference" follows the reference's order of operations and roundings (per-token
    gradients averaged over the patches, per-block head means averaged over the blocks); "fast" computes
    the same quantities with fewer passes (patch sums of the gradients taken by hand below the last
    attention, one running sum of the maps over heads and blocks), equal up to float summation order;
    "auto" = fast for fp32 weights, reference otherwise (fp16 keeps the reference's fp16 roundings).

    precision (see PRECISIONS): "faithful" rounds the interpolated position table to fp16 as the official
    code does on every forward; "fp32" keeps it fp32; "bf16" / "fp16" run the blocks, the last block and
    its backward under autocast (fast, not faithful), while the attention maps are summed and the CAMs
    formed in fp32.
    """
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
    if arithmetic not in _ARITHMETIC:
        raise ValueError(f"arithmetic must be one of {_ARITHMETIC}, got {arithmetic!r}")
    autocast_precision(precision)  # validates the name
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
    blocks = model.visual.transformer.resblocks
    n_blocks = len(blocks)
    k = int(fg_text.shape[0])
    wanted = attention_block_indices(n_blocks, attn_layers)
    if not wanted:
        raise ValueError(f"attention layers {list(attn_layers)} select none of {n_blocks} blocks")
    if arithmetic == "auto":
        arithmetic = "fast" if dtype == torch.float32 else "reference"
    text = torch.cat([fg_text, bg_text], dim=0) if use_background else fg_text
    text = text.to(device=device, dtype=dtype)
    # the reference renormalises the (already unit) text features in the model dtype before the logits
    text = text / text.norm(dim=-1, keepdim=True)

    # Blocks 1..n-1 run once without grad (blocks whose maps the layer mean does not use take the fused
    # attention kernel); the last block's forward, the same for every class, also runs once (the reference
    # repeats it K times).
    images = image[None].to(device)
    position_dtype = torch.float16 if precision == "faithful" else None
    with _precision_context(precision, device, dtype):
        if arithmetic == "fast":
            n_tok = 1 + grid_hw[0] * grid_hw[1]
            # fp32 under autocast too: the in-place sum is not autocast, each map is added in fp32
            total = torch.zeros(1, n_tok, n_tok, dtype=torch.float32, device=device)
            tokens, _ = encode_image_tokens(model, images, upto_block=n_blocks - 1, attention_blocks=wanted,
                                            attention_sum=total, position_dtype=position_dtype)
            last = total if n_blocks - 1 in wanted else None
            alpha, acts, logits = _weights_fast(model, tokens, text, k, score, last)
            attention_mean = total[0, 1:, 1:] / (blocks[0].attn.num_heads * len(wanted))
        else:
            tokens, attentions = encode_image_tokens(model, images, upto_block=n_blocks - 1, attention_blocks=wanted,
                                                     position_dtype=position_dtype)
            alpha, acts, logits, last = _weights_reference(model, tokens, text, k, score, n_blocks - 1 in wanted)
            maps = [a[0] if a is not None else None for a in attentions] + [last]
            attention_mean = layer_mean_attention(maps, attn_layers)
    if autocast_precision(precision):
        acts, alpha = acts.float(), alpha.float()
    cams = cam_from_channel_weights(acts, alpha, grid_hw)
    return CamResult(
        cams=cams.cpu(),
        attention_mean=attention_mean.cpu(),
        logits=logits.float().cpu(),
        grid_hw=grid_hw,
    )


def softmax_gradcam_batch(
    model: CLIP,
    images: torch.Tensor,
    fg_texts: Sequence[torch.Tensor],
    bg_text: torch.Tensor,
    *,
    score: str = "softmax",
    use_background: bool = True,
    attn_layers: Sequence[int | None] = (-8, None),
    precision: str = "fp32",
) -> list[CamResult]:
    """softmax_gradcam of B preprocessed images of one size (B, 3, H, W), fp32 weights, fast arithmetic.

    The blocks run on the whole batch, and the K classes of every image share one vectorised backward:
    the images' class lists are padded to the largest K (padded logits are -inf, so they take no
    softmax mass), and cotangent k selects class k of every image at once, since no image's score
    depends on another image. Equal to one softmax_gradcam(..., arithmetic="fast") per image up to
    float summation order.
    """
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
    autocast_precision(precision)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if len(fg_texts) != images.shape[0] or any(t.ndim != 2 or t.shape[0] == 0 for t in fg_texts):
        raise ValueError(f"fg_texts must hold one (K>0, E) tensor per image, got {len(fg_texts)} for {images.shape[0]}")
    dtype = model_dtype(model)
    if dtype != torch.float32:
        raise ValueError(f"batched CAMs use the fast arithmetic on fp32 weights, but the CLIP is {dtype}")
    device = model.visual.conv1.weight.device
    blocks = model.visual.transformer.resblocks
    n_blocks, block = len(blocks), blocks[-1]
    p = patch_size(model)
    grid_hw = (int(images.shape[-2]) // p, int(images.shape[-1]) // p)
    wanted = attention_block_indices(n_blocks, attn_layers)
    if not wanted:
        raise ValueError(f"attention layers {list(attn_layers)} select none of {n_blocks} blocks")
    b, ks = images.shape[0], [int(t.shape[0]) for t in fg_texts]
    k_max = max(ks)
    # (B, k_max [+ M], E): each image's classes, zero rows as padding, then the shared background words
    width = fg_texts[0].shape[1]
    texts = torch.zeros(b, k_max, width, dtype=dtype, device=device)
    for i, text in enumerate(fg_texts):
        texts[i, : ks[i]] = text.to(device=device, dtype=dtype)
    if use_background:
        texts = torch.cat([texts, bg_text.to(device=device, dtype=dtype).expand(b, -1, -1)], dim=1)
    texts = texts / texts.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    padding = torch.zeros(b, texts.shape[1], dtype=torch.bool, device=device)
    for i, k in enumerate(ks):
        padding[i, k:k_max] = True

    n_tok = 1 + grid_hw[0] * grid_hw[1]
    total = torch.zeros(b, n_tok, n_tok, dtype=torch.float32, device=device)
    with _precision_context(precision, device, dtype):
        tokens, _ = encode_image_tokens(model, images.to(device), upto_block=n_blocks - 1, attention_blocks=wanted,
                                        attention_sum=total,
                                        position_dtype=torch.float16 if precision == "faithful" else None)
        with torch.no_grad():
            ln1 = block.ln_1(tokens)
            parts = [attention_parts(block.attn, ln1[i]) for i in range(b)]
            if n_blocks - 1 in wanted:
                for i, part in enumerate(parts):
                    add_head_sum(total[i : i + 1], part.probs[None])

        def class_scores(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb = embedding_from_attention_output(model, tokens, out)
            feats = emb / emb.norm(dim=-1, keepdim=True)
            logits = torch.bmm((model.logit_scale.exp() * feats)[:, None], texts.transpose(1, 2))[:, 0]
            logits = logits.masked_fill(padding, float("-inf"))
            scores = logits.softmax(dim=-1) if score == "softmax" else logits
            return scores[:, :k_max], logits

        scores, vjp_fn, logits = torch.func.vjp(class_scores, torch.stack([part.out for part in parts]), has_aux=True)
        # cotangent k: class k of every image (padded classes of short lists get zero gradients, unused)
        selectors = torch.eye(k_max, dtype=scores.dtype, device=device)[:, None, :].expand(k_max, b, k_max)
        d_out = _vjp_per_class(vjp_fn, selectors)
        results = []
        with torch.no_grad():
            for i, part in enumerate(parts):
                alpha = patch_sum_of_input_gradients(part, d_out[: ks[i], i], block.attn.in_proj_weight) / (n_tok - 1)
                cams = cam_from_channel_weights(ln1[i, 1:].float(), alpha.float(), grid_hw)
                kept = torch.cat([logits[i, : ks[i]], logits[i, k_max:]]).detach()
                attention_mean = total[i, 1:, 1:] / (blocks[0].attn.num_heads * len(wanted))
                results.append(CamResult(cams=cams.cpu(), attention_mean=attention_mean.cpu(),
                                         logits=kept.float().cpu(), grid_hw=grid_hw))
    return results
