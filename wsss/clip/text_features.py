"""Class/background lists and CLIP text embeddings (CLIP-ES §4)."""

from __future__ import annotations

from typing import Callable, Sequence

import open_clip
import torch
from open_clip.model import CLIP

from wsss.classes import get_class_list, load_class_lists  # noqa: F401  (re-exported)

__all__ = ["DEFAULT_TEMPLATE", "load_class_lists", "get_class_list", "get_tokenizer", "text_features"]

DEFAULT_TEMPLATE = "a clean origami {}."


def get_tokenizer(model_name: str = "ViT-B-16", context_length: int | None = None) -> Callable:
    """open_clip's tokenizer for a model name (the BPE vocabulary ships with the package; no download)."""
    if ":" in model_name:
        raise ValueError(f"model_name {model_name!r}: hub/local-dir schemas are not supported here")
    return open_clip.get_tokenizer(model_name, context_length=context_length)


def text_features(
    model: CLIP,
    tokenizer: Callable,
    names: Sequence[str],
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """(len(names), E) float32: per template encode + L2-normalise, mean over templates, L2-normalise again.

    Synonyms are part of one name string ("person with clothes,people,human"); they are not averaged.
    Normalisation runs in the model's dtype like the reference (fp16 on GPU); the fp32 cast is lossless.
    """
    names, templates = list(names), list(templates)
    if not names:
        raise ValueError("names must not be empty")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates must be non-empty and each contain '{{}}', got {templates!r}")
    device = model.token_embedding.weight.device
    prompts = [t.format(n) for n in names for t in templates]
    chunks = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start : start + batch_size]).to(device)
            emb = model.encode_text(tokens)
            chunks.append(emb / emb.norm(dim=-1, keepdim=True))
        emb = torch.cat(chunks).reshape(len(names), len(templates), -1)
        mean = emb.mean(dim=1)
        mean = mean / mean.norm(dim=-1, keepdim=True)
    return mean.float()
