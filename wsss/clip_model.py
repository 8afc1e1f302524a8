"""CLIP loading and the CLIP-ES image path (interpolated position embeddings, per-block attention maps).

The image path is kept separate from the text path on purpose (pitfall 9 of the spec): the reference code
chose between "text" and "image" by the sequence length, here the two never share a code path.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, convert_weights_to_lp, get_model_preprocess_cfg, set_model_preprocess_cfg
from PIL import Image

__all__ = [
    "build_clip",
    "load_clip",
    "config_from_openai_state_dict",
    "file_sha256",
    "image_stats",
    "resize_to_patch_multiple",
    "image_to_tensor",
    "preprocess_image",
    "interpolate_pos_embed",
    "block_forward_with_attention",
    "block_forward",
    "add_head_sum",
    "AttentionParts",
    "attention_parts",
    "embedding_from_attention_output",
    "encode_image_tokens",
    "image_embedding_from_last_block",
    "model_dtype",
    "patch_size",
]

log = logging.getLogger(__name__)

# Keys of CLIP.__init__ that a plain model config may carry; anything else is rejected loudly.
_CLIP_KWARGS = {
    "embed_dim",
    "vision_cfg",
    "text_cfg",
    "quick_gelu",
    "init_logit_scale",
    "init_logit_bias",
    "nonscalar_logit_scale",
}
# Keys found in open_clip's JSON configs that do not change the module structure.
_IGNORED_CFG_KEYS = {"preprocess_cfg"}
# Extra entries of OpenAI's TorchScript state dict that are not parameters of the module.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Non-persistent buffers of open_clip's CLIP that a scripted module still lists in its state dict.
_NON_PERSISTENT_KEYS = ("attn_mask",)
_PRECISIONS = ("fp16", "fp32")


def build_clip(model_cfg: dict, *, cast_dtype: torch.dtype | None = None) -> CLIP:
    """Construct an open_clip CLIP from a config dict (embed_dim, vision_cfg, text_cfg, quick_gelu), no registry."""
    if not isinstance(model_cfg, dict):
        raise ValueError(f"model_cfg must be a dict, got {type(model_cfg).__name__}")
    cfg = dict(model_cfg)
    if cfg.pop("custom_text", False):
        raise ValueError("model_cfg: custom_text models are not supported (need the plain open_clip CLIP class)")
    for key in _IGNORED_CFG_KEYS:
        cfg.pop(key, None)
    unknown = set(cfg) - _CLIP_KWARGS
    if unknown:
        raise ValueError(f"model_cfg: unknown keys {sorted(unknown)}; allowed: {sorted(_CLIP_KWARGS)}")
    missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(cfg)
    if missing:
        raise ValueError(f"model_cfg: missing keys {sorted(missing)}")
    vision_cfg = dict(cfg["vision_cfg"])
    if isinstance(vision_cfg.get("layers"), (list, tuple)) or vision_cfg.get("timm_model_name"):
        raise ValueError("model_cfg.vision_cfg: only ViT image towers are supported")
    if vision_cfg.get("attentional_pool"):
        raise ValueError("model_cfg.vision_cfg: attentional pooling is not supported")
    cfg["vision_cfg"] = vision_cfg
    cfg["text_cfg"] = dict(cfg["text_cfg"])
    if cfg["text_cfg"].get("hf_model_name"):
        raise ValueError("model_cfg.text_cfg: Hugging Face text towers are not supported")
    model = CLIP(**cfg, cast_dtype=cast_dtype)
    set_model_preprocess_cfg(
        model,
        {
            "size": model.visual.image_size,
            "mean": OPENAI_DATASET_MEAN,
            "std": OPENAI_DATASET_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
            "fill_color": 0,
        },
    )
    return model


def config_from_openai_state_dict(state_dict: dict, *, head_width: int = 64) -> dict:
    """Infer an open_clip ViT CLIP config (QuickGELU) from an OpenAI-style state dict."""
    if "visual.proj" not in state_dict or "visual.conv1.weight" not in state_dict:
        raise ValueError("state dict is not an OpenAI-style ViT CLIP (no visual.proj / visual.conv1.weight)")
    conv = state_dict["visual.conv1.weight"]
    vision_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    vision_layers = len({k.split(".")[3] for k in state_dict if k.startswith("visual.transformer.resblocks.")})
    grid = round(math.sqrt(state_dict["visual.positional_embedding"].shape[0] - 1))
    text_width = int(state_dict["ln_final.weight"].shape[0])
    text_layers = len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")})
    return {
        "embed_dim": int(state_dict["text_projection"].shape[1]),
        "quick_gelu": True,  # OpenAI trained with QuickGELU
        "vision_cfg": {
            "image_size": grid * patch,
            "layers": vision_layers,
            "width": vision_width,
            "patch_size": patch,
            "head_width": head_width,
        },
        "text_cfg": {
            "context_length": int(state_dict["positional_embedding"].shape[0]),
            "vocab_size": int(state_dict["token_embedding.weight"].shape[0]),
            "width": text_width,
            "heads": max(1, text_width // head_width),
            "layers": text_layers,
        },
    }


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _check_sha256(path: Path, expected: str) -> None:
    """Raise ValueError naming the file and both digests unless its sha256 starts with `expected`."""
    expected = expected.strip().lower()
    if len(expected) < 8 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"sha256 for {path} must be a hex digest (or a prefix of >= 8 hex digits), got {expected!r}")
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise ValueError(f"sha256 mismatch for {path}: expected {expected}, got {actual}")


def _read_checkpoint(path: Path) -> tuple[dict, bool]:
    """Read a TorchScript archive or a torch.save'd state dict; return (state_dict, is_torchscript)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but reads OpenAI's archive
            archive = torch.jit.load(str(path), map_location="cpu")
    except Exception:  # not a TorchScript archive: a plain torch.save file
        archive = None
    if archive is not None:
        return {k: v for k, v in archive.state_dict().items()}, True
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read CLIP weights from {path}: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds neither a TorchScript archive nor a state dict of tensors")
    # checkpoints written from DataParallel / DDP carry a 'module.' prefix
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj), False


def _set_precision(model: CLIP, precision: str, device: torch.device) -> CLIP:
    """Move to device; fp16 on CUDA converts weights like OpenAI's convert_weights (LayerNorm stays fp32)."""
    model = model.to(device)
    if precision == "fp16" and device.type == "cuda":
        convert_weights_to_lp(model, dtype=torch.float16)
    return model


def load_clip(
    model: str | None,
    pretrained: str | os.PathLike | None,
    *,
    model_cfg: dict | None = None,
    sha256: str | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp16",
) -> CLIP:
    """Load a frozen eval-mode CLIP from an open_clip tag, an OpenAI TorchScript archive, a state dict or None."""
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision == "fp16" and device.type != "cuda":
        log.info("precision fp16 requested on %s: using fp32 (fp16 is only used on CUDA)", device)
        precision = "fp32"
    # fp16 models need LayerNormFp32 (cast to fp32 inside the norm), which is chosen at construction time
    cast_dtype = torch.float16 if precision == "fp16" else None

    if pretrained is not None and (os.path.exists(pretrained) or _looks_like_path(str(pretrained))):
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights file not found: {path}")
        if sha256:
            _check_sha256(path, sha256)
        state_dict, is_torchscript = _read_checkpoint(path)
        for key in _OPENAI_EXTRA_KEYS + _NON_PERSISTENT_KEYS:
            state_dict.pop(key, None)
        cfg = model_cfg
        if cfg is None:
            cfg = _named_config(model)
            if cfg is not None and is_torchscript:
                cfg["quick_gelu"] = True  # OpenAI's archives were trained with QuickGELU
        if cfg is None:
            cfg = config_from_openai_state_dict(state_dict)
        net = build_clip(cfg, cast_dtype=cast_dtype)
        try:
            net.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"weights in {path} do not match model {model!r}: {exc}") from exc
    elif pretrained is None:
        if sha256:
            raise ValueError("sha256 given but pretrained is None (nothing to check)")
        cfg = model_cfg if model_cfg is not None else _named_config(model)
        if cfg is None:
            raise ValueError(f"unknown open_clip model {model!r} and no model_cfg given")
        net = build_clip(cfg, cast_dtype=cast_dtype)
    else:
        tag = str(pretrained)
        if not model:
            raise ValueError(f"an open_clip model name is needed with the pretrained tag {tag!r}")
        if sha256:
            raise ValueError(f"sha256 can only be checked for local files, not for the open_clip tag {tag!r}")
        if model_cfg is not None:
            raise ValueError("model_cfg cannot be combined with an open_clip pretrained tag")
        tags = open_clip.list_pretrained_tags_by_model(model)
        if tag not in tags:
            raise ValueError(f"pretrained {tag!r} is neither a file nor an open_clip tag of {model!r} ({tags})")
        tag_cfg = open_clip.get_pretrained_cfg(model, tag)
        # open_clip downloads the weights here (user machines only; never in tests). Its "fp16" is the same
        # manual half precision as OpenAI's (LayerNormFp32, weights converted by convert_weights_to_lp).
        net = open_clip.create_model(
            model,
            pretrained=tag,
            precision=precision,
            device=device,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
        )
    net = _set_precision(net, precision, device)
    net.eval()
    net.requires_grad_(False)
    return net


def _named_config(model: str | None) -> dict | None:
    """open_clip's packaged config for a model name (a copy), or None; never touches the network."""
    if not model or ":" in model:
        return None
    return open_clip.get_model_config(model)


def _looks_like_path(text: str) -> bool:
    """True when a pretrained string is clearly meant as a file path rather than an open_clip tag."""
    return os.sep in text or text.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def model_dtype(model: CLIP) -> torch.dtype:
    """Compute dtype of the image tower (fp16 for OpenAI-style half weights, else fp32)."""
    return model.visual.conv1.weight.dtype


def patch_size(model: CLIP) -> int:
    """Square patch size of the ViT image tower."""
    ph, pw = model.visual.patch_size
    if ph != pw:
        raise ValueError(f"non-square patches {ph}x{pw} are not supported")
    return int(ph)


def image_stats(model: CLIP | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation (mean, std) from the model's preprocess config, defaulting to OpenAI's."""
    if model is not None:
        cfg = get_model_preprocess_cfg(model)
        if cfg.get("mean") is not None and cfg.get("std") is not None:
            return tuple(cfg["mean"]), tuple(cfg["std"])
    return tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)


def resize_to_patch_multiple(image: Image.Image, patch: int, scale: float = 1.0) -> Image.Image:
    """PIL bicubic resize to (ceil(s*H/p)*p, ceil(s*W/p)*p) in the image's own mode (before RGB conversion).

    scale 1 is CLIP-ES's native-size input; other scales resize in the same single bicubic step.
    """
    if patch <= 0:
        raise ValueError(f"patch must be positive, got {patch}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    w, h = image.size
    new_h, new_w = int(math.ceil(h * scale / patch) * patch), int(math.ceil(w * scale / patch) * patch)
    # always resize, even to the same size, as the reference's torchvision Resize does
    return image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)


def image_to_tensor(
    image: Image.Image,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> torch.Tensor:
    """RGB-convert a PIL image and normalise it like torchvision ToTensor + Normalize: (3, H, W) float32."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    # A uint8 channel has 256 possible values: run ToTensor + Normalize's float32 ops ((x / 255 - mean) / std)
    # on those, then look every pixel up. Bit-identical to the elementwise version, and a single cheap
    # single-threaded pass over the image instead of several multi-threaded ones.
    levels = torch.arange(256, dtype=torch.float32).div(255)
    m = torch.as_tensor(mean, dtype=torch.float32)[:, None]
    s = torch.as_tensor(std, dtype=torch.float32)[:, None]
    table = levels[None, :].sub(m).div(s).expand(3, -1).numpy()  # (3, 256)
    return torch.from_numpy(np.stack([table[c][arr[:, :, c]] for c in range(3)]))


def preprocess_image(
    image: Image.Image,
    patch: int,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    scale: float = 1.0,
) -> torch.Tensor:
    """CLIP-ES preprocessing: bicubic resize (by scale) to a patch multiple, then RGB, then normalise."""
    return image_to_tensor(resize_to_patch_multiple(image, patch, scale), mean, std)


def interpolate_pos_embed(pos: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (1+G*G, D) position embeddings to (1+h*w, D); the CLS row is kept as is."""
    if pos.ndim != 2:
        raise ValueError(f"pos must be (1+G*G, D), got shape {tuple(pos.shape)}")
    n, d = pos.shape
    g = int(round(math.sqrt(n - 1)))
    if g * g != n - 1:
        raise ValueError(f"pos has {n - 1} patch rows, not a square grid")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    grid = pos[1:].reshape(g, g, d).permute(2, 0, 1).unsqueeze(0)
    # interpolate in fp32 like the reference (its embedding parameter is fp32), cast afterwards
    out = F.interpolate(grid.float(), size=(h, w), mode="bilinear", align_corners=False)
    out = out[0].permute(1, 2, 0).reshape(h * w, d).to(pos.dtype)
    return torch.cat([pos[:1], out], dim=0)


def _check_block(block: torch.nn.Module) -> None:
    """Fail clearly on block types whose attention cannot return weights."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, torch.nn.MultiheadAttention):
        raise ValueError(f"unsupported attention block {type(block).__name__}: need nn.MultiheadAttention")
    if hasattr(block, "ln_1_kv"):
        raise ValueError("cross-attention blocks are not supported")


def block_forward_with_attention(
    block: torch.nn.Module, x: torch.Tensor, ln1: torch.Tensor | None = None, *, average_heads: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One open_clip residual block on (B, L, D) tokens, also returning head-averaged attention (B, L, L).

    With average_heads=False the attention comes per head, (B, H, L, L).
    """
    _check_block(block)
    a = block.ln_1(x) if ln1 is None else ln1
    # Without grad (eval mode, batch-first), nn.MultiheadAttention takes its native path here, where one
    # in-place softmax serves both the output and the map; asking for per-head maps skips its head mean.
    if block.attn.batch_first:
        out, weights = block.attn(a, a, a, need_weights=True, average_attn_weights=average_heads)
    else:
        at = a.transpose(0, 1)
        out, weights = block.attn(at, at, at, need_weights=True, average_attn_weights=average_heads)
        out = out.transpose(0, 1)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights


def add_head_sum(total: torch.Tensor, weights: torch.Tensor) -> None:
    """total (B, L, L) += per-head attention (B, H, L, L) summed over the heads, in place, as one product."""
    b, h = weights.shape[:2]
    ones = torch.ones(b, 1, h, dtype=total.dtype, device=total.device)
    # a (1 x H) @ (H x L*L) product per image: a single pass over the maps, no temporary head mean
    total.view(b, 1, -1).baddbmm_(ones, weights.reshape(b, h, -1).to(total.dtype))


def block_forward(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One open_clip residual block on (B, L, D) tokens through its own forward (fused attention, no map)."""
    if block.attn.batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


@dataclass
class AttentionParts:
    """The pieces of one self-attention of a single token sequence, kept for a hand-written backward."""

    q: torch.Tensor  # (H, L, hd) query projections (not yet scaled by 1/sqrt(hd))
    k: torch.Tensor  # (H, L, hd)
    v: torch.Tensor  # (H, L, hd)
    probs: torch.Tensor  # (H, L, L) softmax attention per head, rows = queries
    out: torch.Tensor  # (L, D) attention output before the out-projection, heads concatenated

    @property
    def scale(self) -> float:
        """The factor applied to q before q k^T."""
        return math.sqrt(1.0 / self.q.shape[-1])


def attention_parts(attn: torch.nn.MultiheadAttention, x: torch.Tensor) -> AttentionParts:
    """Self-attention of one (L, D) sequence computed explicitly, with q, k, v and the per-head softmax.

    The operations are those of nn.MultiheadAttention's need_weights branch (packed in-projection, q
    scaled by 1/sqrt(head_dim) before q k^T, softmax, probs @ v); the out-projection is left to the caller.
    """
    if not isinstance(attn, torch.nn.MultiheadAttention):
        raise ValueError(f"unsupported attention {type(attn).__name__}: need nn.MultiheadAttention")
    if x.ndim != 2:
        raise ValueError(f"x must be one (L, D) sequence, got shape {tuple(x.shape)}")
    if attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn:
        raise ValueError("attention with separate q/k/v projections, bias_k/bias_v or add_zero_attn is not supported")
    n, d = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, 3, heads, d // heads).permute(1, 2, 0, 3).unbind(0)  # (H, L, hd) views, no copy
    scores = torch.bmm(q * math.sqrt(1.0 / q.shape[-1]), k.transpose(1, 2))
    # in place, like the native attention kernel (one (H, L, L) buffer), unless autograd needs the graph
    probs = torch.softmax(scores, dim=-1) if scores.requires_grad else torch.softmax(scores, dim=-1, out=scores)
    out = torch.bmm(probs, v).transpose(0, 1).reshape(n, d)
    return AttentionParts(q, k, v, probs, out)


def _embed_patches(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """conv1 patches + CLS + interpolated position embeddings + ln_pre: (B, 1+N, D)."""
    visual = model.visual
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    p = patch_size(model)
    hh, ww = images.shape[-2:]
    if hh % p or ww % p:
        raise ValueError(f"image size {hh}x{ww} is not a multiple of the patch size {p}")
    dtype = model_dtype(model)
    x = visual.conv1(images.to(dtype))
    b, d = x.shape[:2]
    x = x.reshape(b, d, -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, d).expand(b, 1, d)
    x = torch.cat([cls, x], dim=1)
    pos = interpolate_pos_embed(visual.positional_embedding, (hh // p, ww // p))
    x = x + pos.to(x.dtype)
    return visual.ln_pre(x)


def encode_image_tokens(
    model: CLIP,
    images: torch.Tensor,
    *,
    upto_block: int,
    attention_blocks: Collection[int] | None = None,
    attention_sum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Tokens after blocks 0..upto_block-1 (no grad) and each block's head-averaged attention (B, 1+N, 1+N).

    attention_blocks (indices into the model's blocks; None = all) limits the maps to those needed: the
    other blocks run open_clip's fused attention and give None in the list (same numbers up to rounding).
    With attention_sum, a (B, 1+N, 1+N) buffer, the selected blocks' maps are instead added to it summed
    over heads (add_head_sum) and also give None: cheaper than per-block head means when only their
    layer mean is wanted (the sum's divisor is heads x blocks).
    """
    blocks = model.visual.transformer.resblocks
    if not 0 <= upto_block <= len(blocks):
        raise ValueError(f"upto_block must be in [0, {len(blocks)}], got {upto_block}")
    n = len(blocks)
    if attention_blocks is not None and any(not -n <= int(i) < n for i in attention_blocks):
        raise ValueError(f"attention_blocks must index the {n} blocks, got {sorted(attention_blocks)}")
    wanted = set(range(n)) if attention_blocks is None else {int(i) % n for i in attention_blocks}
    attns: list[torch.Tensor | None] = []
    with torch.no_grad():
        x = _embed_patches(model, images)
        for i, block in enumerate(blocks[:upto_block]):
            if i not in wanted:
                x, w = block_forward(block, x), None
            elif attention_sum is None:
                x, w = block_forward_with_attention(block, x)
            else:
                x, per_head = block_forward_with_attention(block, x, average_heads=False)
                add_head_sum(attention_sum, per_head)
                w = None
            attns.append(w)
    return x, attns


def image_embedding_from_last_block(
    model: CLIP, tokens: torch.Tensor, *, need_attention: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Last block + head: (proj(ln_post(mean of patch tokens)) (B, E), ln_1 output (B, 1+N, D), attention).

    With grad enabled the ln_1 output is part of the autograd graph (a fresh leaf if the tokens do not
    require grad), so torch.autograd.grad(score, ln1) gives the GradCAM gradients. Without need_attention
    the block uses nn.MultiheadAttention's fused path and the attention is None.
    """
    block = model.visual.transformer.resblocks[-1]
    _check_block(block)
    ln1 = block.ln_1(tokens)
    if torch.is_grad_enabled() and not ln1.requires_grad:
        ln1 = ln1.detach().requires_grad_(True)
    if need_attention:
        x, attn = block_forward_with_attention(block, tokens, ln1=ln1)
    else:
        at = ln1 if block.attn.batch_first else ln1.transpose(0, 1)
        out = block.attn(at, at, at, need_weights=False)[0]
        out = out if block.attn.batch_first else out.transpose(0, 1)
        x = tokens + block.ls_1(out)
        x, attn = x + block.ls_2(block.mlp(block.ln_2(x))), None
    return _pool_and_project(model, x), ln1, attn


def _pool_and_project(model: CLIP, x: torch.Tensor) -> torch.Tensor:
    """CLIP-ES image embedding from the last block's output tokens: proj(mean of ln_post(patch tokens))."""
    x = model.visual.ln_post(x)
    # CLIP-ES pools the patch tokens; the CLS token is not used
    return x[:, 1:, :].mean(dim=1) @ model.visual.proj


def embedding_from_attention_output(model: CLIP, tokens: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of the last block and the head from its attention output: (B, L, D) -> embedding (B, E).

    tokens are the last block's input (B, L, D) and attn_out its attention output before the
    out-projection; differentiable in attn_out, so the gradients below the attention can be taken by hand.
    """
    block = model.visual.transformer.resblocks[-1]
    attn = block.attn
    x = tokens + block.ls_1(F.linear(attn_out, attn.out_proj.weight, attn.out_proj.bias))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return _pool_and_project(model, x)
