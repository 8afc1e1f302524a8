"""The demo CLIP: a tiny open_clip ViT trained contrastively on the demo world's image-caption pairs.

CLIP-ES needs a frozen CLIP whose softmax-GradCAM localises the classes and whose self-attention
carries affinity. This module trains one on CPU in a few minutes: a small ViT (8 px patches) and text
transformer, the CLIP loss on the CLS token, plus three default auxiliary losses. Two *caption-supervised
MIL losses* on the last block's value path (what GradCAM at its ln_1 reads) score every patch against
the text embeddings of the concepts (class and background words): a softmax over the words the caption
names (each patch must be one of them, each must win somewhere) and an independent sigmoid per word
(words the caption does not name are negative on every patch), which calibrates the scores across
patches as GradCAM's linear read-out needs. An *attention affinity loss* pulls the last blocks'
attention towards a label-free colour/position kernel, so that CAA has an affinity to work with. Only
image-level text is used, never masks (docs/demo-clip.md).

The checkpoint is a plain dict (``CHECKPOINT_FORMAT``) whose ``model_cfg`` builds the network with
``wsss.clip.factory.build_clip``; ``load_demo_clip`` returns it frozen in eval mode.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, set_model_preprocess_cfg
from PIL import Image

from wsss.checkpoints import save_checkpoint, write_history
from wsss.demo.clip_settings import DEFAULT_SETTINGS, resolve_settings
from wsss.clip.factory import build_clip
from wsss.clip.transformer import block_forward_with_attention, interpolate_pos_embed
from wsss.devices import default_device
from wsss.images import decode_image

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_SETTINGS",
    "resolve_settings",
    "model_config",
    "demo_tokenizer",
    "caption_concepts",
    "load_pairs",
    "augment_batch",
    "last_block_value_embeddings",
    "encode_image_train",
    "concept_loss",
    "dense_caption_loss",
    "sigmoid_caption_loss",
    "concept_affinity",
    "appearance_affinity",
    "attention_affinity_loss",
    "train_demo_clip",
    "save_demo_clip",
    "load_demo_clip",
]

CHECKPOINT_FORMAT = "wsss-demo-clip/1"

def model_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The open_clip CLIP config (accepted by build_clip / open_clip.model.CLIP) for resolved settings."""
    s = settings
    return {
        "embed_dim": int(s["embed_dim"]),
        "quick_gelu": bool(s["quick_gelu"]),
        "init_logit_scale": float(math.log(1.0 / float(s["temperature_init"]))),
        "vision_cfg": {
            "image_size": int(s["image_size"]),
            "patch_size": int(s["patch_size"]),
            "width": int(s["vision_width"]),
            "layers": int(s["vision_layers"]),
            "head_width": int(s["vision_width"]) // int(s["vision_heads"]),
        },
        "text_cfg": {
            "context_length": int(s["context_length"]),
            "vocab_size": 49408,  # open_clip's (OpenAI) BPE vocabulary, shipped with the package
            "width": int(s["text_width"]),
            "heads": int(s["text_heads"]),
            "layers": int(s["text_layers"]),
        },
    }


def demo_tokenizer(context_length: int) -> Callable[[Sequence[str]], torch.Tensor]:
    """open_clip's BPE tokenizer (offline) padded/truncated to the demo CLIP's context length."""
    return open_clip.get_tokenizer("ViT-B-16", context_length=int(context_length))


def _concept_words(settings: Mapping[str, Any]) -> list[str]:
    """Words of the dense loss: the demo world's classes and backgrounds, or the configured list."""
    if settings["concepts"] == "demo":
        from wsss.demo.world import DEMO_BACKGROUNDS, DEMO_CLASSES
        return list(DEMO_CLASSES) + list(DEMO_BACKGROUNDS)
    return [str(c) for c in settings["concepts"]]


def caption_concepts(captions: Sequence[str], concepts: Sequence[str]) -> torch.Tensor:
    """(len(captions), len(concepts)) bool: which concept words (whole words, any case) each caption names."""
    patterns = [re.compile(r"\b" + re.escape(c.lower()) + r"s?\b") for c in concepts]
    out = torch.zeros(len(captions), len(concepts), dtype=torch.bool)
    for i, cap in enumerate(captions):
        low = cap.lower()
        for j, pat in enumerate(patterns):
            out[i, j] = pat.search(low) is not None
    return out


# --------------------------------------------------------------------------------------------- data

def _read_split(world_root: Path, split: str) -> list[str]:
    path = world_root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"demo_clip: split list {path} not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_captions(world_root: Path) -> dict[str, str]:
    path = world_root / "captions.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"demo_clip: captions file {path} not found")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        image_id, sep, caption = line.partition("\t")
        if not sep or not caption.strip():
            raise ValueError(f"demo_clip: {path} line {n} is not 'image_id<TAB>caption'")
        out[image_id] = caption.strip()
    return out


def _to_store(rgb: np.ndarray, size: int) -> torch.Tensor:
    """HxWx3 uint8 -> (3, size, size) uint8, bicubic resize (the crop happens later, batched)."""
    im = Image.fromarray(rgb)
    if im.size != (size, size):
        im = im.resize((size, size), resample=Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_pairs(
    world_root: Path, splits: Sequence[str], store_size: int, *, fresh_scenes: int = 0, seed: int = 0
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Images (n, 3, S, S) uint8, captions and ids of the given splits (+ freshly rendered scenes)."""
    world_root = Path(world_root)
    captions = _read_captions(world_root) if splits else {}
    images: list[torch.Tensor] = []
    texts: list[str] = []
    ids: list[str] = []
    for split in splits:
        for image_id in _read_split(world_root, split):
            if image_id not in captions:
                raise ValueError(f"demo_clip: image {image_id!r} of split {split!r} has no caption in captions.tsv")
            path = world_root / "JPEGImages" / f"{image_id}.jpg"
            if not path.is_file():
                raise FileNotFoundError(f"demo_clip: image {path} not found")
            images.append(_to_store(decode_image(path), store_size))
            texts.append(captions[image_id])
            ids.append(image_id)
    if fresh_scenes:
        from wsss.demo.world import make_caption, render_scene
        for j in range(int(fresh_scenes)):
            # own generator per scene, distinct from the world's (seed, index) streams
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919, j]))
            h, w = (int(v) for v in rng.integers(88, 121, size=2))
            image, _, objects, background = render_scene(rng, h, w)
            names = list(dict.fromkeys(o["name"] for o in objects))
            images.append(_to_store(image, store_size))
            texts.append(make_caption(rng, names, background))
            ids.append(f"fresh_{j:06d}")
    if not images:
        raise ValueError(f"demo_clip: no image-caption pairs in {world_root} (splits {list(splits)})")
    return torch.stack(images), texts, ids


def augment_batch(
    images: torch.Tensor,
    out_size: int,
    generator: torch.Generator,
    *,
    crop_scale: Sequence[float] = (1.0, 1.0),
    crop_ratio: Sequence[float] = (1.0, 1.0),
    hflip: bool = False,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> torch.Tensor:
    """Random resized crops (+ flips) of a uint8 batch (B, 3, S, S) to normalised float (B, 3, out, out)."""
    b = images.shape[0]
    area = torch.empty(b).uniform_(float(crop_scale[0]), float(crop_scale[1]), generator=generator)
    log_r = torch.empty(b).uniform_(math.log(crop_ratio[0]), math.log(crop_ratio[1]), generator=generator)
    ratio = log_r.exp()
    # crop half-extents in normalised coordinates ([-1, 1] spans the image)
    sx = (area * ratio).sqrt().clamp(max=1.0)
    sy = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sx)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sy)
    flip = torch.ones(b)
    if hflip:
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(images.float().div_(255), grid, mode="bilinear", padding_mode="border", align_corners=False)
    m = torch.as_tensor(mean, dtype=x.dtype)[None, :, None, None]
    s = torch.as_tensor(std, dtype=x.dtype)[None, :, None, None]
    return (x - m) / s


# -------------------------------------------------------------------------------------------- model

def last_block_value_embeddings(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, E) patch embeddings of the last block's value path, proj(ln_post(out_proj(v_j))), from its input tokens.

    With near-uniform attention, GradCAM at ln_1 of the last block scores each token by this path
    (the residual stream bypasses ln_1), so it is what a CLIP-ES-friendly CLIP must make local.
    """
    visual = model.visual
    block = visual.transformer.resblocks[-1]
    d = tokens.shape[-1]
    a = block.ln_1(tokens[:, 1:])
    v = F.linear(a, block.attn.in_proj_weight[2 * d:], block.attn.in_proj_bias[2 * d:])
    return visual.ln_post(block.ls_1(block.attn.out_proj(v))) @ visual.proj


def encode_image_train(
    model: CLIP, images: torch.Tensor, attn_blocks: int = 0, value_path: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """CLS embedding (B, E), patch embeddings (B, N, E) = proj(ln_post(token)), the head-averaged
    attention maps (B, 1+N, 1+N) of the last `attn_blocks` blocks, and (if value_path) the last
    block's value-path patch embeddings (B, N, E); any patch-multiple image size."""
    visual = model.visual
    p = int(visual.patch_size[0])
    gh, gw = images.shape[-2] // p, images.shape[-1] // p
    x = visual.conv1(images)
    b, d = x.shape[:2]
    x = x.reshape(b, d, -1).permute(0, 2, 1)
    cls = visual.class_embedding.reshape(1, 1, d).expand(b, 1, d).to(x.dtype)
    x = torch.cat([cls, x], dim=1)
    # the CAM stage interpolates the position embeddings the same way for 88-120 px images
    pos = visual.positional_embedding
    if (gh, gw) != tuple(visual.grid_size):
        pos = interpolate_pos_embed(pos, (gh, gw))
    x = visual.ln_pre(x + pos.to(x.dtype))
    blocks = visual.transformer.resblocks
    first_with_attn = len(blocks) - int(attn_blocks)
    attns: list[torch.Tensor] = []
    value_emb = None
    for i, block in enumerate(blocks):
        if value_path and i == len(blocks) - 1:
            value_emb = last_block_value_embeddings(model, x)
        if i < first_with_attn:
            x = block(x)  # fused attention kernel
        else:
            x, a = block_forward_with_attention(block, x)
            attns.append(a)
    x = visual.ln_post(x)
    emb = x @ visual.proj
    return emb[:, 0], emb[:, 1:], attns, value_emb


def concept_loss(
    image_emb: torch.Tensor, concept_emb: torch.Tensor, present: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Multi-positive softmax cross-entropy of image embeddings (B, E) over concept words (C, E).

    The target spreads the probability evenly over the concepts the caption names, so the CLIP-ES
    score (a softmax over the present classes and the background words) is what gets trained.
    """
    logits = scale * F.normalize(image_emb.float(), dim=-1) @ F.normalize(concept_emb.float(), dim=-1).t()
    pres = present.to(logits.dtype)
    target = pres / pres.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def _per_patch(present: torch.Tensor) -> torch.Tensor:
    """present (B, C) per image or (B, N, C) per patch, as (B, 1 or N, C)."""
    return present[:, None, :] if present.dim() == 2 else present


def pair_mosaic(images: torch.Tensor, present: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (2M, 3, H, W) pasted side by side in pairs (M, 3, H, 2W), and each patch's named concepts
    (M, N, C), row-major like the patch tokens, from the caption of the image it comes from (present (2M, C))."""
    gh, gw = images.shape[-2] // patch, images.shape[-1] // patch
    from_right = (torch.arange(2 * gw, device=present.device) >= gw)[None, :, None]  # (1, 2gw, 1)
    per_column = torch.where(from_right, present[1::2, None, :], present[0::2, None, :])  # (M, 2gw, C)
    per_patch = per_column[:, None].expand(-1, gh, -1, -1).reshape(per_column.shape[0], gh * 2 * gw, -1)
    return torch.cat([images[0::2], images[1::2]], dim=-1), per_patch


def dense_caption_loss(
    patch_emb: torch.Tensor, concept_emb: torch.Tensor, present: torch.Tensor, scale: torch.Tensor, topk: int
) -> torch.Tensor:
    """MIL loss: each patch's concept softmax must fall on the caption's concepts, each named concept must win somewhere.

    patch_emb (B, N, E) and concept_emb (C, E) need not be normalised; present (B, C) bool, or (B, N, C) per patch.
    """
    p = F.normalize(patch_emb.float(), dim=-1)
    t = F.normalize(concept_emb.float(), dim=-1)
    prob = (scale * p @ t.t()).softmax(dim=-1)  # (B, N, C)
    inside = -(prob * _per_patch(present).to(prob.dtype)).sum(dim=-1).clamp_min(1e-6).log().mean()
    k = max(1, min(int(topk), prob.shape[1]))
    pooled = prob.topk(k, dim=1).values.mean(dim=1)  # (B, C)
    pres = _per_patch(present).any(dim=1).to(prob.dtype)
    cover = -(pooled.clamp_min(1e-6).log() * pres).sum() / pres.sum().clamp_min(1.0)
    return inside + cover


def sigmoid_caption_loss(
    patch_emb: torch.Tensor, concept_emb: torch.Tensor, present: torch.Tensor, scale: torch.Tensor,
    bias: torch.Tensor, topk: int
) -> torch.Tensor:
    """Sigmoid MIL loss: absent concepts negative on every patch, each named concept positive on its top-k
    patches, and every patch covered by at least one named concept (noisy-OR).

    patch_emb (B, N, E) and concept_emb (C, E) need not be normalised; present (B, C) bool, or (B, N, C) per patch.
    """
    p = F.normalize(patch_emb.float(), dim=-1)
    t = F.normalize(concept_emb.float(), dim=-1)
    logit = scale * p @ t.t() + bias  # (B, N, C)
    pres = _per_patch(present).to(logit.dtype)
    absent = -(F.logsigmoid(-logit) * (1 - pres)).sum() / (1 - pres).expand_as(logit).sum().clamp_min(1.0)
    # log P(patch covered) = log(1 - prod_c (1 - sigma_c)) over the named concepts
    log_none = (F.logsigmoid(-logit) * pres).sum(dim=-1)  # (B, N)
    covered = -torch.log(-torch.expm1(log_none.clamp_max(-1e-6))).mean()
    k = max(1, min(int(topk), logit.shape[1]))
    pooled = torch.sigmoid(logit).topk(k, dim=1).values.mean(dim=1)  # (B, C)
    named = _per_patch(present).any(dim=1).to(logit.dtype)
    positive = -(pooled.clamp_min(1e-6).log() * named).sum() / named.sum().clamp_min(1.0)
    return absent + covered + positive


def concept_affinity(
    patch_emb: torch.Tensor, concept_emb: torch.Tensor, present: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """(B, N, N) rows summing to 1: P P^T with P each patch's concept softmax over the caption's concepts."""
    with torch.no_grad():
        p = F.normalize(patch_emb.float(), dim=-1) @ F.normalize(concept_emb.float(), dim=-1).t()
        p = (scale * p).masked_fill(~present[:, None, :], float("-inf")).softmax(dim=-1)
        target = p @ p.transpose(1, 2)
        return target / target.sum(dim=-1, keepdim=True)


def appearance_affinity(
    images: torch.Tensor, patch: int, sigma_rgb: float, sigma_xy: float,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> torch.Tensor:
    """(B, N, N) rows summing to 1: a bilateral kernel on patch mean colours and patch-grid positions.

    images are normalised (B, 3, H, W); colours are compared in [0, 1] RGB units (the mean cancels),
    positions in patch units. This is a label-free image prior, like the dense CRF's bilateral term.
    """
    with torch.no_grad():
        s = torch.as_tensor(std, dtype=torch.float32, device=images.device)[None, :, None, None]
        col = F.avg_pool2d(images.float() * s, patch)  # (B, 3, gh, gw)
        b, _, gh, gw = col.shape
        col = col.flatten(2).transpose(1, 2)  # (B, N, 3)
        yy, xx = torch.meshgrid(torch.arange(gh, device=images.device), torch.arange(gw, device=images.device),
                                indexing="ij")
        pos = torch.stack([yy.flatten(), xx.flatten()], dim=-1).float()  # (N, 2)
        d_col = torch.cdist(col, col).square() / (2 * sigma_rgb ** 2)
        d_pos = torch.cdist(pos, pos).square() / (2 * sigma_xy ** 2)
        target = torch.exp(-(d_col + d_pos[None]))
        return target / target.sum(dim=-1, keepdim=True)


def attention_affinity_loss(attentions: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Mean over blocks of the cross-entropy from target rows (B, N, N) to the patch-to-patch attention rows.

    attentions are head-averaged (B, 1+N, 1+N) maps; the CLS row and column are dropped and the rows
    renormalised, exactly the part of the attention that CAA turns into an affinity.
    """
    loss = target.new_zeros((), dtype=torch.float32)
    for a in attentions:
        a = a[:, 1:, 1:].float()
        log_a = (a / a.sum(dim=-1, keepdim=True)).clamp_min(1e-8).log()
        loss = loss - (target * log_a).sum(dim=-1).mean()
    return loss / max(1, len(attentions))


def _param_groups(params: Sequence[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay only on matrices (not on gains, biases, embeddings, temperature)."""
    decay, no_decay = [], []
    for name, p in params:
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("scale")
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    """Linear warm-up then cosine decay to 0."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _autocast(precision: str, device: torch.device):
    """bf16 autocast context (CPU or CUDA), or a disabled one for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ----------------------------------------------------------------------------------------- training

def train_demo_clip(
    world_root: Path,
    out_path: Path,
    settings: Mapping[str, Any] | None = None,
    seed: int = 0,
    log: Callable[[str], Any] = print,
    *,
    device: str | torch.device | None = None,
    history_path: str | Path | None = None,
) -> dict[str, Any]:
    """Train the demo CLIP on the world's image-caption pairs and write the checkpoint atomically; return metrics.

    ``history_path`` gets the per-step losses and learning rate as CSV.
    """
    s = resolve_settings(settings)
    world_root, out_path = Path(world_root), Path(out_path)
    if not world_root.is_dir():
        raise FileNotFoundError(f"demo_clip: world root {world_root} is not a directory")
    device = default_device(device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(s["threads"]))
    try:
        return _train(world_root, out_path, s, int(seed), log, device, history_path)
    finally:
        torch.set_num_threads(old_threads)


def _train(world_root: Path, out_path: Path, s: dict, seed: int, log: Callable, device: torch.device,
           history_path: str | Path | None) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # data order and augmentation, always on the CPU

    store = max(max(s["train_sizes"]), int(s["image_size"]))
    images, captions, _ = load_pairs(world_root, s["splits"], store, fresh_scenes=s["fresh_scenes"], seed=seed)
    n = images.shape[0]
    tokenizer = demo_tokenizer(s["context_length"])
    tokens = tokenizer(captions)
    concepts = _concept_words(s)
    present = caption_concepts(captions, concepts)
    # (T, C, L): every concept word in every prompt template
    concept_tokens = torch.stack([tokenizer([t.format(c) for c in concepts]) for t in s["concept_prompts"]]).to(device)
    t_data = time.perf_counter() - t_start
    log(f"demo_clip: {n} image-caption pairs loaded in {t_data:.1f}s; settings {s}")

    cfg = model_config(s)
    model = build_clip(cfg).to(device)
    model.train()
    dense_log_scale = torch.nn.Parameter(torch.tensor(math.log(float(s["dense_scale_init"])), device=device))
    named = list(model.named_parameters())
    if not s["learn_temperature"]:
        model.logit_scale.requires_grad_(False)
    if s["dense_weight"] > 0 or s["value_dense_weight"] > 0:
        named.append(("dense_log_scale", dense_log_scale))
    # SigLIP's initialisation: scale 10, bias -10 (every pair starts negative)
    sigmoid_log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0), device=device))
    sigmoid_bias = torch.nn.Parameter(torch.tensor(-10.0, device=device))
    if s["value_sigmoid_weight"] > 0:
        named += [("sigmoid_log_scale", sigmoid_log_scale), ("sigmoid_bias", sigmoid_bias)]
    opt = torch.optim.AdamW(_param_groups(named, float(s["weight_decay"])), lr=float(s["lr"]),
                            betas=(0.9, 0.98), eps=1e-6)
    max_log_scale = math.log(float(s["max_logit_scale"]))

    bs = min(int(s["batch_size"]), n)
    n_pairs = int(round(float(s["mosaic_fraction"]) * bs / 2))
    n_plain = bs - 2 * n_pairs  # the CLIP and attention losses see these; the value-path losses see all
    steps = int(s["steps"])
    order = torch.randperm(n, generator=gen)
    cursor = 0
    history: list[dict] = []
    t_loop = time.perf_counter()
    cpu_loop = time.process_time()
    for step in range(steps):
        if cursor + bs > n:  # new epoch: fresh permutation, drop the incomplete tail
            order = torch.randperm(n, generator=gen)
            cursor = 0
        idx = order[cursor:cursor + bs]
        cursor += bs
        size = int(s["train_sizes"][int(torch.randint(len(s["train_sizes"]), (1,), generator=gen))])
        x = augment_batch(images[idx], size, gen, crop_scale=s["crop_scale"], crop_ratio=s["crop_ratio"],
                          hflip=bool(s["hflip"])).to(device)
        lr = _lr_at(step, steps, int(s["warmup"]), float(s["lr"]))
        for group in opt.param_groups:
            group["lr"] = lr
        named_words = present[idx].to(device)
        use_attn = float(s["attn_weight"]) > 0
        use_value = float(s["value_dense_weight"]) > 0 or float(s["value_sigmoid_weight"]) > 0
        mosaic_value_emb = None
        if n_pairs:
            mosaic, mosaic_words = pair_mosaic(x[n_plain:], named_words[n_plain:], int(s["patch_size"]))
            x, idx, named_words = x[:n_plain], idx[:n_plain], named_words[:n_plain]
        with _autocast(s["precision"], device):
            cls_emb, patch_emb, attns, value_emb = encode_image_train(
                model, x, int(s["attn_blocks"]) if use_attn else 0, value_path=use_value)
            if n_pairs and use_value:
                mosaic_value_emb = encode_image_train(model, mosaic, 0, value_path=True)[3]
            img = cls_emb if s["pooling"] == "cls" else patch_emb.mean(dim=1)
            txt = model.encode_text(tokens[idx].to(device))
            if (s["dense_weight"] > 0 or use_value or s["concept_weight"] > 0
                    or (use_attn and s["attn_target"] == "concept")):
                which = int(torch.randint(len(concept_tokens), (1,), generator=gen))
                concept_emb = model.encode_text(concept_tokens[which])
        img = F.normalize(img.float(), dim=-1)
        txt = F.normalize(txt.float(), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.t()
        target = torch.arange(len(idx), device=device)
        clip_loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        loss = clip_loss
        dense = torch.zeros((), device=device)
        if s["dense_weight"] > 0:
            dense = dense_caption_loss(patch_emb, concept_emb, named_words, dense_log_scale.exp(),
                                       int(s["dense_topk"]))
            loss = loss + float(s["dense_weight"]) * dense
        def over_plain_and_mosaic(value_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
            """A value-path loss averaged over the plain images and the mosaics, each counted once."""
            out = value_loss(value_emb, named_words)
            if mosaic_value_emb is None:
                return out
            return (n_plain * out + n_pairs * value_loss(mosaic_value_emb, mosaic_words)) / (n_plain + n_pairs)

        value_dense = torch.zeros((), device=device)
        if s["value_dense_weight"] > 0:
            value_dense = over_plain_and_mosaic(lambda emb, words: dense_caption_loss(
                emb, concept_emb, words, dense_log_scale.exp(), int(s["dense_topk"])))
            loss = loss + float(s["value_dense_weight"]) * value_dense
        value_sigmoid = torch.zeros((), device=device)
        if s["value_sigmoid_weight"] > 0:
            value_sigmoid = over_plain_and_mosaic(lambda emb, words: sigmoid_caption_loss(
                emb, concept_emb, words, sigmoid_log_scale.exp(), sigmoid_bias, int(s["dense_topk"])))
            loss = loss + float(s["value_sigmoid_weight"]) * value_sigmoid
        word = torch.zeros((), device=device)
        if s["concept_weight"] > 0:
            # the model's own temperature: CLIP-ES scores with exp(logit_scale) too
            word = concept_loss(patch_emb.float().mean(dim=1), concept_emb, named_words,
                                model.logit_scale.exp())
            loss = loss + float(s["concept_weight"]) * word
        attn_loss = torch.zeros((), device=device)
        if use_attn:
            if s["attn_target"] == "appearance":
                target_aff = appearance_affinity(x, int(s["patch_size"]), float(s["attn_sigma_rgb"]),
                                                 float(s["attn_sigma_xy"]))
            else:
                target_aff = concept_affinity(patch_emb, concept_emb, named_words, dense_log_scale.exp())
            attn_loss = attention_affinity_loss(attns, target_aff)
            loss = loss + float(s["attn_weight"]) * attn_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, max_log_scale)
            dense_log_scale.clamp_(0.0, max_log_scale)
            sigmoid_log_scale.clamp_(0.0, max_log_scale)
        acc = (logits.detach().argmax(dim=1) == target).float().mean().item()
        rec = {"step": step + 1, "loss": loss.item(), "clip_loss": clip_loss.item(), "dense_loss": dense.item(),
               "value_dense_loss": value_dense.item(), "value_sigmoid_loss": value_sigmoid.item(),
               "concept_loss": word.item(),
               "attn_loss": attn_loss.item(),
               "acc": acc, "logit_scale": model.logit_scale.detach().exp().item(), "lr": lr}
        history.append(rec)
        if s["log_every"] and ((step + 1) % int(s["log_every"]) == 0 or step + 1 == steps):
            el = time.perf_counter() - t_loop
            log(f"demo_clip: step {step + 1}/{steps} loss {rec['loss']:.4f} (clip {rec['clip_loss']:.4f}, "
                f"word {rec['concept_loss']:.4f}, dense {rec['dense_loss']:.4f}, value {rec['value_dense_loss']:.4f}, sigmoid {rec['value_sigmoid_loss']:.4f}, attn {rec['attn_loss']:.4f}) acc {acc:.3f} scale {rec['logit_scale']:.1f} "
                f"{(step + 1) * bs / max(el, 1e-9):.0f} img/s ETA {el / (step + 1) * (steps - step - 1):.0f} s")
    train_s = time.perf_counter() - t_loop
    if history_path is not None:
        write_history(history, history_path)
    # CPU time of this process: with other jobs on the machine, wall time alone overstates the cost
    cpu_s = time.process_time() - cpu_loop

    model.eval()
    model.requires_grad_(False)
    tail = history[-10:] if history else []
    metrics = {
        "n_pairs": n,
        "steps": steps,
        "batch_size": bs,
        "seed": seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "data_seconds": round(t_data, 2),
        "train_seconds": round(train_s, 2),
        "train_cpu_seconds": round(cpu_s, 2),
        "images_per_second": round(steps * bs / train_s, 1) if steps and train_s > 0 else None,
        "final_loss": float(np.mean([r["loss"] for r in tail])) if tail else None,
        "final_clip_loss": float(np.mean([r["clip_loss"] for r in tail])) if tail else None,
        "final_concept_loss": float(np.mean([r["concept_loss"] for r in tail])) if tail else None,
        "final_dense_loss": float(np.mean([r["dense_loss"] for r in tail])) if tail else None,
        "final_value_dense_loss": float(np.mean([r["value_dense_loss"] for r in tail])) if tail else None,
        "final_value_sigmoid_loss": float(np.mean([r["value_sigmoid_loss"] for r in tail])) if tail else None,
        "sigmoid_scale_bias": [sigmoid_log_scale.detach().exp().item(), sigmoid_bias.detach().item()],
        "dense_scale": dense_log_scale.detach().exp().item(),
        "final_attn_loss": float(np.mean([r["attn_loss"] for r in tail])) if tail else None,
        "final_batch_accuracy": float(np.mean([r["acc"] for r in tail])) if tail else None,
        "logit_scale": model.logit_scale.detach().exp().item(),
        "loss_curve": [round(r["loss"], 5) for r in history],
    }
    save_demo_clip(model, cfg, out_path, settings=s, metrics=metrics)
    log(f"demo_clip: trained {steps} steps in {train_s:.1f}s wall, {cpu_s:.1f}s CPU "
        f"({metrics['images_per_second']} img/s); wrote {out_path}")
    return metrics


def save_demo_clip(
    model: CLIP,
    model_cfg: Mapping[str, Any],
    out_path: Path,
    *,
    settings: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    image_mean: Sequence[float] = OPENAI_DATASET_MEAN,
    image_std: Sequence[float] = OPENAI_DATASET_STD,
) -> None:
    """Write a CHECKPOINT_FORMAT dict (fp32 CPU state dict, model_cfg, normalisation, settings, metrics) atomically."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model_cfg": dict(model_cfg),
        "state_dict": {k: v.detach().cpu().float().clone() for k, v in model.state_dict().items()},
        "image_mean": [float(v) for v in image_mean],
        "image_std": [float(v) for v in image_std],
        "settings": dict(settings or {}),
        "metrics": dict(metrics or {}),
    }
    save_checkpoint(ckpt, out_path)


def load_demo_clip(path: Path, device: str | torch.device | None = None) -> CLIP:
    """The demo CLIP from a checkpoint written by train_demo_clip: eval mode, frozen, fp32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demo CLIP checkpoint not found: {path}")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read demo CLIP checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a demo CLIP checkpoint (format {got!r}, expected {CHECKPOINT_FORMAT!r})")
    model = build_clip(dict(ckpt["model_cfg"]))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"state dict in {path} does not match its model_cfg: {exc}") from exc
    set_model_preprocess_cfg(model, {"size": model.visual.image_size, "mean": tuple(ckpt["image_mean"]),
                                     "std": tuple(ckpt["image_std"]), "interpolation": "bicubic",
                                     "resize_mode": "shortest", "fill_color": 0})
    device = default_device(device)
    model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model
