"""CLIP stages: text features and prompt ranking, shared by every method instance.

The demo CLIP's training is ``wsss.demo.clip.train_demo_clip``, which its rule calls directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from wsss.atomic import atomic_output
from wsss.classes import Vocabulary
from wsss.clip.configured import load_configured_clip
from wsss.clip.factory import patch_size
from wsss.clip.transform import preprocess_image
from wsss.datasets import read_manifest, usable_rows
from wsss.devices import default_device
from wsss.h5store import write_stage
from wsss.images import decode_image
from wsss.clip.text_features import text_features

log = logging.getLogger(__name__)


def chosen_template(text: Mapping[str, Any], ranking: Sequence[str | Path]) -> str:
    """The configured template, or the best-ranked candidate when text.template is 'auto'."""
    if text["template"] != "auto":
        return text["template"]
    if not ranking:
        raise ValueError("text.template is 'auto' but no prompt ranking was given")
    table = pd.read_csv(ranking[0]).sort_values("rank")
    return str(table["template"].iloc[0])


def run_text_features(
    clip: Mapping[str, Any],
    checkpoint: Sequence[str | Path],
    vocabulary: Vocabulary,
    template: str,
    out_path: str | Path,
    locking: Any = None,
) -> None:
    """Encode the foreground prompts (synonyms inside one prompt) and the background words."""
    model, tokenizer, _, _ = load_configured_clip(clip, checkpoint, default_device())
    with torch.no_grad():
        foreground = text_features(model, tokenizer, vocabulary.prompt_names, [template]).cpu().numpy()
        background = (text_features(model, tokenizer, vocabulary.background_words, [template]).cpu().numpy()
                      if vocabulary.background_words else np.zeros((0, foreground.shape[1]), np.float32))
    params = {"clip": dict(clip), "template": template, "prompts": list(vocabulary.prompt_names),
              "background_words": list(vocabulary.background_words)}
    with write_stage(out_path, "text_features", params, inputs=list(checkpoint), locking=locking) as out:
        out.create_dataset("foreground", data=foreground.astype(np.float32))
        out.create_dataset("background", data=background.astype(np.float32))
        out.attrs["template"] = template
        out.attrs["class_prompts"] = "\n".join(vocabulary.prompt_names)
        out.attrs["background_words"] = "\n".join(vocabulary.background_words)
    log.info("text features: %d classes, %d background words, template %r", len(foreground), len(background),
             template)


def run_prompt_ranking(
    clip: Mapping[str, Any],
    checkpoint: Sequence[str | Path],
    vocabulary: Vocabulary,
    manifest_path: str | Path,
    candidates: Sequence[str],
    out_path: str | Path,
    max_images: int = 2000,
) -> pd.DataFrame:
    """Rank candidate templates by sharpness on the multi-label images of the pseudo split."""
    from wsss.clip.prompt_selection import rank_templates

    model, tokenizer, mean, std = load_configured_clip(clip, checkpoint, default_device())
    table, _ = usable_rows(read_manifest(manifest_path))
    table = table[table["labels"].map(len) >= 2].head(max_images)
    if table.empty:
        raise ValueError(f"{manifest_path}: no multi-label images to rank prompt templates on")
    size = model.visual.image_size
    side = int(size[0]) if isinstance(size, tuple) else int(size)
    images = []
    for path in table["image_path"]:
        image = Image.fromarray(decode_image(path)).resize((side, side), Image.Resampling.BICUBIC)
        images.append(preprocess_image(image, patch_size(model), mean, std))
    ranking = rank_templates(model, tokenizer, images, list(table["labels"]), vocabulary.prompt_names,
                             vocabulary.background_words, list(candidates))
    with atomic_output(out_path) as tmp:
        ranking.to_csv(tmp, index=False)
    log.info("prompt ranking on %d images:\n%s", len(images), ranking.to_string(index=False))
    return ranking
