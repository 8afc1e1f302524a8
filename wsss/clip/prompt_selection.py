"""Sharpness-based prompt selection (CLIP-ES Eq. 9; exact form not confirmed, so kept configurable)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from open_clip.model import CLIP

from wsss.clip.transformer import encode_image_tokens, image_embedding_from_last_block
from wsss.clip.text_features import text_features

__all__ = ["sharpness", "image_embeddings", "class_probabilities", "rank_templates"]

_POOLINGS = ("cls", "patch_mean")


def sharpness(scores: np.ndarray, labels: Sequence[Sequence[int]]) -> float:
    """Sum over multi-label images of var(s_i[targets]) / mean(s_i[targets]).

    scores: (n_images, n_classes) softmax probabilities; labels: per image the target class indices.
    The variance is the population variance (ddof=0); images with fewer than two distinct targets
    are skipped because a single score has no spread.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n_images, n_classes), got shape {scores.shape}")
    if len(labels) != scores.shape[0]:
        raise ValueError(f"{len(labels)} label arrays for {scores.shape[0]} images")
    total = 0.0
    for i, targets in enumerate(labels):
        t = np.unique(np.asarray(targets, dtype=np.int64))
        if t.size < 2:
            continue
        if t.min() < 0 or t.max() >= scores.shape[1]:
            raise ValueError(f"image {i}: target indices {t.tolist()} outside 0..{scores.shape[1] - 1}")
        s = scores[i, t]
        total += float(np.var(s) / np.mean(s))
    return total


def image_embeddings(model: CLIP, images: Iterable[torch.Tensor], *, pooling: str = "cls") -> torch.Tensor:
    """L2-normalised image embeddings (n, E) fp32 of preprocessed images (3, H, W) of any patch-multiple size.

    pooling="cls" is plain CLIP (ln_post of the CLS token); "patch_mean" is CLIP-ES's mean of patch tokens.
    """
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
    device = model.visual.conv1.weight.device
    n_blocks = len(model.visual.transformer.resblocks)
    out = []
    with torch.no_grad():
        for img in images:
            img = img[None] if img.ndim == 3 else img
            if pooling == "patch_mean":
                tokens, _ = encode_image_tokens(model, img.to(device), upto_block=n_blocks - 1)
                emb, _, _ = image_embedding_from_last_block(model, tokens)
            else:
                tokens, _ = encode_image_tokens(model, img.to(device), upto_block=n_blocks)
                emb = model.visual.ln_post(tokens[:, 0]) @ model.visual.proj
            out.append((emb / emb.norm(dim=-1, keepdim=True)).float())
    if not out:
        raise ValueError("no images given")
    return torch.cat(out)


def class_probabilities(model: CLIP, image_emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Softmax over exp(logit_scale) * cos(image, text) for (n, E) images and (C, E) texts: (n, C) fp32."""
    scale = model.logit_scale.exp().float().cpu()
    logits = scale * image_emb.float().cpu() @ text.float().cpu().t()
    return logits.softmax(dim=-1)


def rank_templates(
    model: CLIP,
    tokenizer,
    images: Sequence[torch.Tensor],
    labels: Sequence[Sequence[int]],
    class_names: Sequence[str],
    bg_names: Sequence[str] | None,
    templates: Sequence[str],
    *,
    lower_is_better: bool = True,
    pooling: str = "cls",
) -> pd.DataFrame:
    """Sharpness of each candidate template on labelled images: DataFrame(template, sharpness, n_images, rank).

    Scores are the softmax over all foreground classes (plus the background words when given, which
    never count as targets); rank 1 is the preferred template (lowest sharpness unless lower_is_better
    is False).
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label arrays")
    if not templates:
        raise ValueError("templates must not be empty")
    img = image_embeddings(model, images, pooling=pooling)
    n_multi = sum(1 for t in labels if np.unique(np.asarray(t)).size >= 2)
    rows = []
    for template in templates:
        text = text_features(model, tokenizer, class_names, [template])
        if bg_names:
            text = torch.cat([text, text_features(model, tokenizer, bg_names, [template])])
        probs = class_probabilities(model, img, text).numpy()
        rows.append({"template": template, "sharpness": sharpness(probs, labels), "n_images": n_multi})
    df = pd.DataFrame(rows)
    df["rank"] = df["sharpness"].rank(method="min", ascending=lower_is_better).astype(int)
    return df.sort_values(["rank", "template"], kind="stable").reset_index(drop=True)
