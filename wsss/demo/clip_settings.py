"""The demo CLIP's training settings: defaults with the reasons behind them, and their checks.

Kept apart from the training code (torch, open_clip) so the workflow can check a config's
``demo_clip`` section while it parses.
"""

from __future__ import annotations

from typing import Any, Mapping

DEFAULT_SETTINGS: dict[str, Any] = {
    # --- model (becomes model_cfg; image_size fixes the position-embedding grid)
    "image_size": 96,
    "patch_size": 8,
    "vision_width": 128,
    "vision_layers": 4,
    "vision_heads": 4,
    "text_width": 128,
    "text_layers": 3,
    "text_heads": 4,
    "context_length": 32,  # captions are < 20 BPE tokens; tokenise CAM prompts with the same length
    "embed_dim": 128,
    "quick_gelu": False,
    # --- optimisation
    "steps": 240,
    "batch_size": 128,
    "lr": 2.0e-3,  # 1e-3 -> 2e-3 raised the initial demo CAM from 0.255 to 0.293 (docs/demo-clip.md)
    "warmup": 30,  # linear warm-up steps, then cosine decay to 0
    "weight_decay": 0.1,  # not applied to gains, biases, embeddings and the temperature
    "temperature_init": 0.07,  # exp(logit_scale) starts at 1 / temperature_init
    "learn_temperature": True,
    "max_logit_scale": 100.0,
    "pooling": "cls",  # image embedding of the CLIP loss: cls | mean (of ln_post patch tokens)
    # --- caption-word loss on the CAM-time embedding proj(mean ln_post(patch tokens)) (0 disables it)
    "concept_weight": 0.0,
    # prompts for the concept words of the concept/dense losses, one drawn per step; they include the
    # CLIP-ES template and the pipeline's prompt candidates so that any of them works at CAM time
    "concept_prompts": ["a photo of a {}.", "a clean origami {}.", "a rendering of a weird {}.", "a photo of the {}."],
    # --- caption-supervised dense loss (0 disables it)
    "dense_weight": 0.0,
    "dense_scale_init": 10.0,  # initial (learnable) logit scale of the per-patch concept softmax
    "dense_topk": 36,  # a named concept's image score is the mean of its top-k patch probabilities: with 4
    #                    the loss let most of an object be background; with the sigmoid loss 24 beat 12 by
    #                    +0.026 initial-CAM mIoU and 36 beat 24 by +0.012 (docs/demo-clip.md)
    # --- the same MIL loss on the last block's value path proj(ln_post(out_proj(v_j))) (0 disables it):
    # the part of each token that CLIP-ES's GradCAM at ln_1 of the last block reads
    "value_dense_weight": 1.0,
    # --- a sigmoid MIL loss on the same value path (0 disables it): per patch and concept word an independent
    # logit, so absent words are pushed down on every patch; this calibrates the scores across patches,
    # which a linear read-out such as GradCAM needs (the softmax loss only ranks words within a patch)
    "value_sigmoid_weight": 1.0,
    # share of each batch pasted side by side in pairs (H x 2W inputs) for the two value-path losses: each
    # patch's named words come from its own image's caption, so a patch must not take the class of the other
    # image's objects. 0.5 gave +0.012 and -0.007 initial CAM in two comparisons, and about 15 % faster steps,
    # since the CLIP and attention losses then see half the batch (0 disables it)
    "mosaic_fraction": 0.5,
    "concepts": "demo",  # "demo" = DEMO_CLASSES + DEMO_BACKGROUNDS, or an explicit list of words
    # --- attention affinity loss (0 disables it)
    "attn_weight": 1.0,
    "attn_blocks": 2,  # the last blocks whose attention is aligned (CAA uses the last half)
    "attn_target": "appearance",  # appearance (colour + position kernel) | concept (needs dense_weight > 0)
    "attn_sigma_rgb": 0.08,  # colour scale of the appearance kernel, [0, 1] RGB units
    "attn_sigma_xy": 3.0,  # position scale of the appearance kernel, in patches
    # --- augmentation (random resized crop of the whole image, horizontal flip)
    "crop_scale": [0.35, 1.0],  # range of the crop's area fraction; crops down to 0.35 enlarge objects up to
    #                             1.7x, towards the CAM stage's 2x input_scale in the demo config
    "crop_ratio": [0.8, 1.25],  # range of the crop's aspect ratio
    "hflip": True,
    "train_sizes": [96],  # per-step input size drawn from this list (multiples of patch_size)
    # --- data
    "splits": ["clip_pretrain", "train"],  # ImageSets/Segmentation/<split>.txt lists with captions
    "fresh_scenes": 0,  # extra scenes rendered with wsss.demo.world.render_scene (4-5 ms each on CPU)
    # --- runtime
    # fp32 | bf16 (autocast). On the 2-core dev VM (avx512_bf16, no AMX) fp32 trains at 105-113 img/s and
    # bf16 at 51-60 img/s: its bf16 matmuls and CPU flash-attention backward are slower than fp32
    "precision": "fp32",
    "threads": 2,
    "log_every": 25,
}

_SEQUENCE_KEYS = {"crop_scale", "crop_ratio", "train_sizes", "splits", "concept_prompts"}


def resolve_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULT_SETTINGS overridden key by key; ValueError naming any unknown key or bad value."""
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULT_SETTINGS.items()}
    for key, value in dict(settings or {}).items():
        if key not in DEFAULT_SETTINGS:
            raise ValueError(f"demo_clip: unknown setting {key!r}; known settings: {sorted(DEFAULT_SETTINGS)}")
        out[key] = list(value) if key in _SEQUENCE_KEYS or isinstance(value, tuple) else value
    _check_settings(out)
    return out


def _check_settings(s: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first inconsistent setting."""
    for key in ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "text_width",
                "text_layers", "text_heads", "context_length", "embed_dim", "batch_size", "threads"):
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 1:
            raise ValueError(f"demo_clip: {key} must be a positive integer, got {s[key]!r}")
    for key in ("steps", "warmup", "fresh_scenes", "log_every", "dense_topk", "attn_blocks"):
        if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 0:
            raise ValueError(f"demo_clip: {key} must be a non-negative integer, got {s[key]!r}")
    if s["vision_width"] % s["vision_heads"]:
        raise ValueError(f"demo_clip: vision_width {s['vision_width']} is not divisible by vision_heads {s['vision_heads']}")
    if s["text_width"] % s["text_heads"]:
        raise ValueError(f"demo_clip: text_width {s['text_width']} is not divisible by text_heads {s['text_heads']}")
    if s["image_size"] % s["patch_size"]:
        raise ValueError(f"demo_clip: image_size {s['image_size']} is not a multiple of patch_size {s['patch_size']}")
    sizes = s["train_sizes"]
    if not sizes or any(not isinstance(v, int) or v < s["patch_size"] or v % s["patch_size"] for v in sizes):
        raise ValueError(f"demo_clip: train_sizes must be multiples of patch_size {s['patch_size']}, got {sizes!r}")
    for key in ("crop_scale", "crop_ratio"):
        lo_hi = s[key]
        if len(lo_hi) != 2 or not 0 < float(lo_hi[0]) <= float(lo_hi[1]):
            raise ValueError(f"demo_clip: {key} must be [low, high] with 0 < low <= high, got {lo_hi!r}")
    if float(s["crop_scale"][1]) > 1:
        raise ValueError(f"demo_clip: crop_scale must not exceed 1, got {s['crop_scale']!r}")
    for key in ("lr", "temperature_init", "max_logit_scale", "dense_scale_init", "attn_sigma_rgb", "attn_sigma_xy"):
        if not float(s[key]) > 0:
            raise ValueError(f"demo_clip: {key} must be positive, got {s[key]!r}")
    for key in ("weight_decay", "dense_weight", "value_dense_weight", "value_sigmoid_weight", "attn_weight",
                "concept_weight"):
        if float(s[key]) < 0:
            raise ValueError(f"demo_clip: {key} must be >= 0, got {s[key]!r}")
    if s["attn_weight"] > 0 and not 1 <= s["attn_blocks"] <= s["vision_layers"]:
        raise ValueError(f"demo_clip: attn_blocks must be in 1..vision_layers ({s['vision_layers']}), got {s['attn_blocks']}")
    if s["attn_target"] not in ("appearance", "concept"):
        raise ValueError(f"demo_clip: attn_target must be 'appearance' or 'concept', got {s['attn_target']!r}")
    if s["attn_weight"] > 0 and s["attn_target"] == "concept" and not s["dense_weight"] > 0:
        raise ValueError("demo_clip: attn_target 'concept' needs dense_weight > 0 (the affinity target comes from it)")
    if not 0 <= float(s["mosaic_fraction"]) < 1:
        raise ValueError(f"demo_clip: mosaic_fraction must be in [0, 1), got {s['mosaic_fraction']!r}")
    if s["pooling"] not in ("cls", "mean"):
        raise ValueError(f"demo_clip: pooling must be 'cls' or 'mean', got {s['pooling']!r}")
    if s["precision"] not in ("bf16", "fp32"):
        raise ValueError(f"demo_clip: precision must be 'bf16' or 'fp32', got {s['precision']!r}")
    prompts = s["concept_prompts"]
    if not prompts or any("{}" not in str(t) for t in prompts):
        raise ValueError(f"demo_clip: concept_prompts must be a non-empty list of templates with '{{}}', got {prompts!r}")
    if s["concepts"] != "demo" and (not isinstance(s["concepts"], (list, tuple)) or not s["concepts"]):
        raise ValueError(f"demo_clip: concepts must be 'demo' or a non-empty list of words, got {s['concepts']!r}")
    if not s["splits"] and not s["fresh_scenes"]:
        raise ValueError("demo_clip: no training data (splits is empty and fresh_scenes is 0)")
