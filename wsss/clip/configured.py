"""The CLIP a config names: the pipeline's demo CLIP checkpoint, or open_clip / local weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from wsss.clip.factory import load_clip
from wsss.clip.transform import image_stats
from wsss.clip.text_features import get_tokenizer


def load_configured_clip(clip: Mapping[str, Any], checkpoint: Sequence[str | Path], device: torch.device):
    """(model, tokenizer, mean, std) for the config's ``clip`` section; ``checkpoint`` is the demo CLIP file, if any."""
    if clip["model"] == "demo":
        from wsss.demo.clip import load_demo_clip

        if len(checkpoint) != 1:
            raise ValueError("clip.model 'demo' needs the demo CLIP checkpoint as the rule's clip input")
        model = load_demo_clip(checkpoint[0], device)
        tokenizer = get_tokenizer("ViT-B-16", context_length=int(model.context_length))
    else:
        model = load_clip(clip["model"], clip["pretrained"], sha256=clip.get("sha256"), device=device,
                          precision=clip.get("precision", "fp16"))
        tokenizer = get_tokenizer(clip["model"])
    mean, std = image_stats(model)  # the demo checkpoint's own statistics, or the pretrained model's
    return model, tokenizer, mean, std
