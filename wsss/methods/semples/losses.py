"""SemPLeS soft masks and the three stage losses (SemPLeS spec §4, §5).

For every positive (image, class) pair the mask generator's fine CAM becomes a soft mask ``M̂``; CLIP
encodes the masked foreground ``M̂ ⊙ X`` and background ``(1 − M̂) ⊙ X``, and each loss is a mean over
the pairs of per-pair log similarities (no softmax over classes, no temperature):

- stage a, ``match_loss``:  ``−log s(v_f, t) + λ1 · −log(1 − s(v_b, t))``
- stage b, ``prompt_loss``: ``−log s(v_b, u) + λ2 · log s(t, u)``
- stage c, ``refine_loss``: ``match_loss + λ3 · −log(1 − s(v_f, u))``

with ``s`` the clamped cosine, ``t`` the class text feature and ``u`` the class's learned background
prompt feature. Each loss returns its scalar and a dict of the unweighted terms (plus ``total``) for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "clamped_cosine",
    "positive_pairs",
    "soft_masks",
    "masked_views",
    "match_loss",
    "prompt_loss",
    "refine_loss",
]

LossTerms = dict[str, float]


def clamped_cosine(a: torch.Tensor, b: torch.Tensor, low: float = 1e-4, high: float = 0.9999,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Row-wise cosine similarity of (P, D) features clamped to [low, high], in ``dtype`` (None: at least fp32)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must both be (P, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    # fp16 cannot hold 0.9999 (it rounds to 1.0, and -log(1 - s) becomes inf): float32 or wider unless the
    # release's fp16 arithmetic is asked for (precision faithful on CUDA).
    if dtype is None:
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    cos = (F.normalize(a.to(dtype), dim=-1) * F.normalize(b.to(dtype), dim=-1)).sum(dim=-1)
    return cos.clamp(low, high)


def positive_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_index, class_index) LongTensors of the nonzero entries of multi-hot (B, C) labels, row-major."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be (B, C), got shape {tuple(labels.shape)}")
    image_index, class_index = torch.nonzero(labels.bool(), as_tuple=True)
    return image_index, class_index


def soft_masks(
    fine_cam: torch.Tensor,
    image_index: torch.Tensor,
    class_index: torch.Tensor,
    size: tuple[int, int],
    eps: float,
) -> torch.Tensor:
    """(P, 1, H, W) per-pair maps, bilinearly upsampled (align_corners=True), min–max normalised with +eps."""
    if fine_cam.ndim != 4:
        raise ValueError(f"fine_cam must be (B, C, h, w), got shape {tuple(fine_cam.shape)}")
    maps = fine_cam[image_index, class_index].unsqueeze(1)
    maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=True)
    low = maps.amin(dim=(1, 2, 3), keepdim=True)
    high = maps.amax(dim=(1, 2, 3), keepdim=True)
    # eps keeps flat maps finite and, at 0.1 (stages a, c), keeps every mask strictly below 1 (spec pitfall 4).
    return (maps - low) / (high - low + eps)


def masked_views(
    images: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground M̂ ⊙ X_n and background (1 − M̂) ⊙ X_n, each (P, 3, H, W), for the pairs' images."""
    if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"masks must be (P, 1, {images.shape[-2]}, {images.shape[-1]}) for these images, got {tuple(masks.shape)}"
        )
    selected = images[image_index]
    # Masked-out pixels become 0 in the (ImageNet-normalised) input space, i.e. the mean grey.
    return masks * selected, (1 - masks) * selected


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 or wider: autocast computes logs in fp32 whatever their input."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _mean_neg_log(s: torch.Tensor) -> torch.Tensor:
    """mean(−log s): pulls the pairs' similarities towards 1."""
    return -torch.log(_at_least_fp32(s)).mean()


def _mean_neg_log_complement(s: torch.Tensor) -> torch.Tensor:
    """mean(−log(1 − s)): pushes the pairs' similarities towards 0."""
    # 1 − s in the similarity's own dtype (fp16 rounds it, as the release's expression does), the log in fp32
    if s.dtype == torch.float16:
        return -torch.log(_at_least_fp32(1 - s)).mean()
    return -torch.log1p(-_at_least_fp32(s)).mean()


def _check_pairs(*features: torch.Tensor) -> None:
    """ValueError unless there is at least one pair: every term is a mean over pairs (empty gives NaN)."""
    if features[0].shape[0] == 0:
        raise ValueError("no positive pairs: every SemPLeS loss term is a mean over the batch's positive pairs")


def _terms(total: torch.Tensor, **terms: torch.Tensor) -> LossTerms:
    """Unweighted terms and the total as Python floats for logging."""
    return {**{name: float(value.detach()) for name, value in terms.items()}, "total": float(total.detach())}


def match_loss(v_f: torch.Tensor, v_b: torch.Tensor, t: torch.Tensor, lambda1: float,
               dtype: torch.dtype | None = None) -> tuple[torch.Tensor, LossTerms]:
    """Stage a: mean(−log s(v_f, t)) + λ1 · mean(−log(1 − s(v_b, t))); t holds each pair's class text feature.

    ``dtype`` is the similarities' (``clamped_cosine``), as in every loss here.
    """
    _check_pairs(v_f)
    fg_text = _mean_neg_log(clamped_cosine(v_f, t, dtype=dtype))
    bg_text = _mean_neg_log_complement(clamped_cosine(v_b, t, dtype=dtype))
    total = fg_text + lambda1 * bg_text
    return total, _terms(total, fg_text=fg_text, bg_text=bg_text)


def prompt_loss(v_b: torch.Tensor, t: torch.Tensor, u: torch.Tensor, lambda2: float,
                dtype: torch.dtype | None = None) -> tuple[torch.Tensor, LossTerms]:
    """Stage b: mean(−log s(v_b, u)) + λ2 · mean(log s(t, u)); u holds each pair's class prompt feature."""
    _check_pairs(v_b)
    bg_prompt = _mean_neg_log(clamped_cosine(v_b, u, dtype=dtype))
    # +log s (not −log(1 − s)), as released: minimising it pushes the prompt away from the class name.
    text_prompt = -_mean_neg_log(clamped_cosine(t, u, dtype=dtype))
    total = bg_prompt + lambda2 * text_prompt
    return total, _terms(total, bg_prompt=bg_prompt, text_prompt=text_prompt)


def refine_loss(
    v_f: torch.Tensor, v_b: torch.Tensor, t: torch.Tensor, u: torch.Tensor, lambda1: float, lambda3: float,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, LossTerms]:
    """Stage c: match_loss + λ3 · mean(−log(1 − s(v_f, u))), pushing the foreground off the background prompt."""
    matched, terms = match_loss(v_f, v_b, t, lambda1, dtype)
    fg_prompt = _mean_neg_log_complement(clamped_cosine(v_f, u, dtype=dtype))
    total = matched + lambda3 * fg_prompt
    return total, {**terms, "fg_prompt": float(fg_prompt.detach()), "total": float(total.detach())}
