"""CLIP-ES stage 1 runners: text features, prompt ranking, per-shard softmax-GradCAM, CAA refinement."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from wsss.affinity import refine_cams, sinkhorn_affinity
from wsss.classes import Vocabulary, dataset_vocabulary
from wsss.clip_model import image_stats, load_clip, patch_size, preprocess_image
from wsss.datasets import read_manifest
from wsss.gradcam import softmax_gradcam
from wsss.h5store import get_image, image_ids, open_stage, put_image, set_image_order, write_stage
from wsss.shards import shard_rows
from wsss.text_features import get_tokenizer, text_features

log = logging.getLogger(__name__)


def job_device() -> torch.device:
    """CUDA when a GPU is visible to this job, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_cam_model(clip: Mapping[str, Any], checkpoint: Sequence[str | Path], device: torch.device):
    """(model, tokenizer, mean, std) for the configured CLIP: the pipeline's demo CLIP or open_clip weights."""
    if clip["model"] == "demo":
        from wsss.demo_clip import load_demo_clip

        if len(checkpoint) != 1:
            raise ValueError("clip.model 'demo' needs the demo CLIP checkpoint as the rule's clip input")
        model, info = load_demo_clip(checkpoint[0], device), torch.load(checkpoint[0], map_location="cpu",
                                                                         weights_only=False)
        mean, std = tuple(info["image_mean"]), tuple(info["image_std"])
        tokenizer = get_tokenizer("ViT-B-16", context_length=int(model.context_length))
    else:
        model = load_clip(clip["model"], clip["pretrained"], sha256=clip.get("sha256"), device=device,
                          precision=clip.get("precision", "fp16"))
        mean, std = image_stats(model)
        tokenizer = get_tokenizer(clip["model"])
    return model, tokenizer, mean, std


def chosen_template(text: Mapping[str, Any], ranking: Sequence[str | Path]) -> str:
    """The configured template, or the best-ranked candidate when text.template is 'auto'."""
    if text.get("template", "a clean origami {}.") != "auto":
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
    model, tokenizer, _, _ = load_cam_model(clip, checkpoint, job_device())
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
    config: Mapping[str, Any],
    dataset: Mapping[str, Any],
    manifest_path: str | Path,
    candidates: Sequence[str],
    out_path: str | Path,
    max_images: int = 2000,
) -> pd.DataFrame:
    """Rank candidate templates by sharpness on the multi-label images of the pseudo split."""
    from wsss.prompt_selection import rank_templates

    model, tokenizer, mean, std = load_cam_model(clip, checkpoint, job_device())
    vocabulary = dataset_vocabulary(config, dataset)
    table = read_manifest(manifest_path)
    table = table[table["labels"].map(len) >= 2].head(max_images)
    if table.empty:
        raise ValueError(f"{manifest_path}: no multi-label images to rank prompt templates on")
    side = int(model.visual.image_size[0]) if isinstance(model.visual.image_size, tuple) else int(model.visual.image_size)
    images = []
    for path in table["image_path"]:
        with Image.open(path) as image:
            images.append(preprocess_image(image.resize((side, side), Image.Resampling.BICUBIC), patch_size(model),
                                           mean, std))
    ranking = rank_templates(model, tokenizer, images, list(table["labels"]), vocabulary.prompt_names,
                             vocabulary.background_words, list(candidates))
    ranking.to_csv(out_path, index=False)
    log.info("prompt ranking on %d images:\n%s", len(images), ranking.to_string(index=False))
    return ranking


def run_cams(
    manifest_path: str | Path,
    shard: str,
    shard_size: int,
    text_path: str | Path,
    clip: Mapping[str, Any],
    checkpoint: Sequence[str | Path],
    cam: Mapping[str, Any],
    cams_path: str | Path,
    affinity_path: str | Path,
    locking: Any = None,
) -> None:
    """Initial softmax-GradCAMs (patch resolution) and the attention affinity input for one shard."""
    device = job_device()
    model, _, mean, std = load_cam_model(clip, checkpoint, device)
    table = shard_rows(read_manifest(manifest_path), shard, shard_size)
    table = table[table["skip_reason"] == ""]
    with open_stage(text_path, locking) as text:
        foreground = torch.from_numpy(text["foreground"][()]).to(device)
        background = torch.from_numpy(text["background"][()]).to(device)
    layers = tuple(cam.get("attn_layers", (-8, None)))
    options = {"score": cam.get("score", "softmax"), "use_background": cam.get("use_background", True),
               "attn_layers": layers}
    ablations = {"cam_logit": {"score": "logit", "use_background": True},
                 "cam_softmax_nobg": {"score": "softmax", "use_background": False}} if cam.get("ablations") else {}
    inputs = [manifest_path, text_path, *checkpoint]
    params = {"clip": dict(clip), "cam": dict(cam)}
    patch = patch_size(model)
    input_scale = float(cam.get("input_scale", 1.0))
    with write_stage(cams_path, "cams", params, inputs=inputs, locking=locking) as cams_out, \
            write_stage(affinity_path, "affinity", params, inputs=inputs, locking=locking) as affinity_out:
        for row in table.itertuples(index=False):
            with Image.open(row.image_path) as image:
                tensor = preprocess_image(image, patch, mean, std, scale=input_scale)
            keys = np.asarray(row.labels, dtype=np.int64)
            fg = foreground[torch.from_numpy(keys).to(device)]
            result = softmax_gradcam(model, tensor, fg, background, **options)
            arrays = {"keys": keys.astype(np.int16), "cam": result.cams.cpu().numpy()}
            for name, variant in ablations.items():
                arrays[name] = softmax_gradcam(model, tensor, fg, background, attn_layers=layers,
                                               **variant).cams.cpu().numpy()
            size = {"height": int(row.height), "width": int(row.width)}
            put_image(cams_out, row.image_id, arrays, size)
            # Uncompressed: the file is temporary, and gzip would cost about 5 % of a forward pass per image.
            put_image(affinity_out, row.image_id, {"attention": result.attention_mean.cpu().numpy()}, size,
                      compression=None)
        for handle in (cams_out, affinity_out):
            set_image_order(handle, list(table["image_id"]))
    log.info("CAMs for shard %s: %d images on %s", shard, len(table), device)


def run_caa(
    cams_path: str | Path,
    affinity_path: str | Path,
    caa: Mapping[str, Any],
    out_path: str | Path,
    locking: Any = None,
) -> None:
    """Refine one shard's CAMs with class-aware attention affinity (Sinkhorn, A^t, box masks)."""
    empty_total = 0
    with open_stage(cams_path, locking) as cams, open_stage(affinity_path, locking) as affinity, \
            write_stage(out_path, "caa", dict(caa), inputs=[cams_path, affinity_path], locking=locking) as out:
        ids = image_ids(cams)
        for image_id in ids:
            stored = get_image(cams, image_id)
            initial = torch.from_numpy(stored["cam"])
            if caa.get("enabled", True):
                matrix = sinkhorn_affinity(torch.from_numpy(affinity[image_id]["attention"][()]),
                                           rounds=caa.get("sinkhorn_rounds", 3))
                refined, empty = refine_cams(initial, matrix, power=caa.get("power", 2),
                                             threshold=caa.get("box_threshold", 0.4),
                                             border=caa.get("box_border", "faithful"),
                                             empty_box=caa.get("empty_box", "zeros"), return_empty=True)
            else:
                refined, empty = initial, np.zeros(len(initial), bool)
            empty_total += int(np.sum(empty))
            put_image(out, image_id, {"keys": stored["keys"], "cam": refined.numpy().astype(np.float32)},
                      {"height": stored["height"], "width": stored["width"], "empty_boxes": int(np.sum(empty))})
        set_image_order(out, ids)
    log.info("CAA on %d images; %d class maps had no box (empty_box=%s)", len(ids), empty_total,
             caa.get("empty_box", "zeros"))
