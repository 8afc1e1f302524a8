"""WeakTr, the mask generator S of SemPLeS: a DeiT-S ViT with one class token per class.

The model follows the release (``docs/semples.md``). A ViT backbone (timm DeiT parameter names, so a DeiT-S
ImageNet checkpoint loads) runs C class tokens ahead of the patch tokens. Every block hands back its
softmax attention and its attention-branch output; adaptive attention fusion (AAF) weighs the
``depth * heads`` attention maps by a small network on those branch outputs and averages them. A 3x3
conv head on the patch grid gives the coarse CAM; class-to-patch attention times the coarse CAM gives
the fused CAM, and patch-to-patch attention refines it into the fine CAM (patch-affinity refinement).

Two training modes share the module (``WeakTr.detach_backbone``):

* ``False``, WeakTr phase 1: the whole model learns from three multi-label soft-margin losses;
* ``True``, SemPLeS stages a and c: the backbone runs without autograd, so only the conv head and the
  AAF learn, through the fine CAM.

Facts taken from the authors' releases (WeakTr, SemPLeS) that the spec does not spell out:

* there is no final LayerNorm: class and patch tokens are read straight after the last block
  (``WeakTrConfig.final_norm`` switches it on; ``norm`` is kept so DeiT checkpoints round-trip);
* the coarse logits are the average of the conv head output *before* its ReLU;
* the AAF inputs are detached in phase 1 too, so the attention path never trains the backbone;
* the ``depth * heads`` maps are ordered head-major (index ``head * depth + layer``), which fixes the
  column order of the AAF's head-weight network in released checkpoints;
* parameter names ``head`` and ``adaptive_attention_fusion.{attn_feat_ffn,attn_head_ffn}`` match the
  released checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from wsss.digests import check_sha256

__all__ = [
    "WeakTrConfig",
    "WeakTrOutput",
    "Block",
    "AdaptiveAttentionFusion",
    "WeakTr",
    "split_heads_interleaved",
    "stack_head_major",
    "interpolate_patch_pos_embed",
    "class_maps",
    "token_labels",
    "phase1_loss",
    "deit_state_dict_for",
    "load_deit",
    "load_weaktr_checkpoint",
    "trainable_parameters",
    "is_backbone_key",
    "STAGES",
]

log = logging.getLogger(__name__)

# State-dict prefixes of the parts that learn in SemPLeS stages a and c; every other key is backbone.
HEAD_PREFIXES = ("head.", "adaptive_attention_fusion.")
STAGES = ("phase1", "match", "refine")
POOLS = ("max", "avg")
_POSITIVE_INTS = ("num_classes", "image_size", "patch_size", "width", "depth", "heads", "aaf_reduction", "aaf_hidden")


@dataclass(frozen=True)
class WeakTrConfig:
    """Architecture of WeakTr; the defaults are DeiT-S/16 with the VOC AAF (max pooling, r = 8)."""

    num_classes: int
    image_size: int = 224  # only sets the stored position-embedding grid (image_size / patch_size)^2
    patch_size: int = 16
    width: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    drop_path: float = 0.1  # the last block's rate; rates rise linearly from 0 over the blocks
    aaf_pool: str = "max"  # "max" (VOC) | "avg" (COCO)
    aaf_reduction: int = 8  # r: 8 (VOC), 4 (COCO)
    aaf_hidden: int = 8  # hidden size of the per-map feature MLP (head_dim -> hidden -> 1)
    final_norm: bool = False  # the releases skip the final LayerNorm
    pre_norm: bool = False  # a LayerNorm before the first block, as CLIP's ViTs have (ln_pre; init from CLIP)
    norm_eps: float = 1e-6  # DeiT's; CLIP's ViTs use 1e-5
    # The class token of each dataset class when there are more tokens than classes (the release's COCO
    # model has 90 tokens, one per raw category slot, 10 of them without a category); None: token k is class k.
    class_slots: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for key in _POSITIVE_INTS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"weaktr.{key}: must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"weaktr.image_size: must be a multiple of weaktr.patch_size "
                             f"({self.patch_size}), got {self.image_size}")
        if self.width % self.heads:
            raise ValueError(f"weaktr.width: must be divisible by weaktr.heads ({self.heads}), got {self.width}")
        if not _is_number(self.mlp_ratio) or not math.isfinite(self.mlp_ratio) or self.mlp_ratio <= 0 \
                or int(self.width * self.mlp_ratio) < 1:
            raise ValueError(f"weaktr.mlp_ratio: must be a positive number giving at least one hidden unit, "
                             f"got {self.mlp_ratio!r}")
        if not _is_number(self.drop_path) or not 0 <= self.drop_path < 1:
            raise ValueError(f"weaktr.drop_path: must be a number in [0, 1), got {self.drop_path!r}")
        if self.aaf_pool not in POOLS:
            raise ValueError(f"weaktr.aaf_pool: must be one of {list(POOLS)}, got {self.aaf_pool!r}")
        if self.attention_maps % self.aaf_reduction:
            raise ValueError(f"weaktr.aaf_reduction: must divide weaktr.heads * weaktr.depth "
                             f"({self.attention_maps}), got {self.aaf_reduction}")
        for key in ("final_norm", "pre_norm"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"weaktr.{key}: must be true or false, got {getattr(self, key)!r}")
        if not _is_number(self.norm_eps) or not 0 < self.norm_eps < 1:
            raise ValueError(f"weaktr.norm_eps: must be a small positive number, got {self.norm_eps!r}")
        if self.class_slots is not None:
            slots = tuple(self.class_slots)
            object.__setattr__(self, "class_slots", slots)  # a list from a saved config becomes a tuple
            if any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_classes for k in slots) \
                    or len(set(slots)) != len(slots):
                raise ValueError(f"weaktr.class_slots: must be distinct class-token indices below num_classes "
                                 f"({self.num_classes}), got {list(slots)}")

    @property
    def dataset_classes(self) -> int:
        """Number of dataset classes the tokens stand for (fewer than the tokens when class_slots is set)."""
        return self.num_classes if self.class_slots is None else len(self.class_slots)

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.width // self.heads

    @property
    def grid(self) -> int:
        """Side of the stored (square) position-embedding grid."""
        return self.image_size // self.patch_size

    @property
    def attention_maps(self) -> int:
        """Number of attention maps the AAF fuses (L = depth * heads)."""
        return self.depth * self.heads

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WeakTrConfig:
        """Build from a config mapping; unknown keys are an error."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"weaktr: unknown key(s) {unknown} (known: {known})")
        if "num_classes" not in d:
            raise ValueError("weaktr.num_classes: required")
        return cls(**dict(d))


def _is_number(value: Any) -> bool:
    """True for int or float, not bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class WeakTrOutput(NamedTuple):
    """Everything WeakTr computes for a batch; h, w = the patch grid, N = h * w."""

    class_logits: Tensor  # (B, C) channel mean of each class token
    coarse_logits: Tensor  # (B, C) GAP of the conv head output (before its ReLU)
    fine_logits: Tensor  # (B, C) GAP of fine_cam
    coarse_cam: Tensor  # (B, C, h, w) ReLU of the conv head output
    cams: Tensor  # (B, C, h, w) fused CAM: class-to-patch attention * coarse CAM
    fine_cam: Tensor  # (B, C, h, w) fused CAM refined by patch-to-patch attention
    patch_attn: Tensor  # (B, N, N) fused patch-to-patch attention


def split_heads_interleaved(features: Tensor, heads: int) -> Tensor:
    """(B, T, D) attention-branch output -> (B, heads, T, D // heads); channel c goes to head c % heads."""
    # The release splits the channels as (D // heads, heads), i.e. interleaved, not in contiguous blocks;
    # the AAF of a released checkpoint was trained on that split.
    batch, tokens, width = features.shape
    if width % heads:
        raise ValueError(f"split_heads_interleaved: {width} channels do not split into {heads} heads")
    return features.reshape(batch, tokens, width // heads, heads).permute(0, 3, 1, 2)


def stack_head_major(per_layer: Sequence[Tensor]) -> Tensor:
    """Per-layer (B, heads, ...) tensors -> (B, heads * layers, ...), map index = head * layers + layer."""
    # Head-major is the release's order; it matters only for the AAF head-weight network's columns.
    return torch.stack(list(per_layer), dim=2).flatten(1, 2)


def interpolate_patch_pos_embed(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """(1, N0, D) patch position embeddings on a square grid -> (1, h * w, D) on grid (h, w), bicubic."""
    _, count, dim = pos.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"interpolate_patch_pos_embed: {count} stored positions do not form a square grid")
    height, width = grid
    if (height, width) == (side, side):
        return pos
    # DINO-style, as in the release: scale factors from (h + 0.1, w + 0.1) make floor(side * factor) land on
    # (h, w) despite rounding, and the bicubic sampling then uses these factors (not h / side).
    resized = F.interpolate(pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
                            scale_factor=((height + 0.1) / side, (width + 0.1) / side), mode="bicubic",
                            align_corners=False)
    if tuple(resized.shape[-2:]) != (height, width):
        raise RuntimeError(f"interpolate_patch_pos_embed: got grid {tuple(resized.shape[-2:])}, "
                           f"wanted {(height, width)}")
    return resized.permute(0, 2, 3, 1).reshape(1, height * width, dim)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; a stride-p conv, so any remainder of the image sides is ignored."""

    def __init__(self, patch_size: int, width: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, h * w, D) in row-major grid order, and the grid (h, w)."""
        grid = self.proj(images)
        return grid.flatten(2).transpose(1, 2), (grid.shape[-2], grid.shape[-1])


class Attention(nn.Module):
    """Multi-head self-attention that also returns its softmax attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, D) -> projected output (B, T, D) and attention (B, heads, T, T)."""
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        # Explicit softmax rather than a fused kernel: the attention maps themselves are an output.
        attn = ((query @ key.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ value).transpose(1, 2).reshape(batch, tokens, width)
        return self.proj(out), attn


class Mlp(nn.Module):
    """Two-layer GELU MLP (timm names fc1, fc2)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D)."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block returning (tokens, attention, attention-branch output)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, heads)
        # One module, two calls: each call draws its own per-sample mask.
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, D) -> tokens (B, T, D), attention (B, heads, T, T), branch output (B, T, D) before drop path."""
        branch, attn = self.attn(self.norm1(x))
        x = x + self.drop_path(branch)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn, branch


class AdaptiveAttentionFusion(nn.Module):
    """Weights each of L attention maps by a gate computed from its attention features, then averages."""

    def __init__(self, maps: int, head_dim: int, hidden: int = 8, reduction: int = 8, pool: str = "max") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"AdaptiveAttentionFusion: pool must be one of {list(POOLS)}, got {pool!r}")
        if maps % reduction:
            raise ValueError(f"AdaptiveAttentionFusion: reduction {reduction} does not divide {maps} maps")
        self.pool = pool
        # Names as in the released checkpoints. No activation between the two feature layers (as released).
        self.attn_feat_ffn = nn.Sequential(nn.Linear(head_dim, hidden), nn.Linear(hidden, 1))
        self.attn_head_ffn = nn.Sequential(
            nn.Linear(maps, maps // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(maps // reduction, maps, bias=False),
            nn.Sigmoid(),
        )

    def weights(self, features: Tensor) -> Tensor:
        """(B, L, T, d) attention features -> (B, L) fusion weights in (0, 1)."""
        pooled = features.amax(dim=2) if self.pool == "max" else features.mean(dim=2)
        return self.attn_head_ffn(self.attn_feat_ffn(pooled).squeeze(-1))

    def forward(self, attn: Tensor, features: Tensor) -> Tensor:
        """(B, L, T, T) maps and (B, L, T, d) features -> fused attention (B, T, T) = mean_L(maps * weights)."""
        weights = self.weights(features)
        # A contraction instead of (attn * w).mean(1) avoids a second (B, L, T, T) tensor.
        return torch.einsum("blij,bl->bij", attn, weights.to(attn.dtype)) / attn.shape[1]


def _init_vit_layer(module: nn.Module) -> None:
    """timm ViT init: truncated-normal Linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class WeakTr(nn.Module):
    """WeakTr mask generator; ``detach_backbone`` selects phase 1 (False) or SemPLeS stages a/c (True)."""

    def __init__(self, config: WeakTrConfig, detach_backbone: bool = False) -> None:
        super().__init__()
        self.config = config
        self.detach_backbone = detach_backbone
        classes, width = config.num_classes, config.width
        self.patch_embed = PatchEmbed(config.patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, classes, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, classes + config.grid ** 2, width))
        # timm's stochastic-depth rule: rates rise linearly from 0 to drop_path (plain floats, so that the
        # model can also be built on the meta device)
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.norm_pre = nn.LayerNorm(width, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(width, config.heads, config.mlp_ratio, rate, config.norm_eps)
                                    for rate in rates)
        self.norm = nn.LayerNorm(width, eps=config.norm_eps)
        self.head = nn.Conv2d(width, classes, kernel_size=3, padding=1)
        self.adaptive_attention_fusion = AdaptiveAttentionFusion(
            config.attention_maps, config.head_dim, config.aaf_hidden, config.aaf_reduction, config.aaf_pool)
        # Backbone as timm's ViT; the conv head and the AAF keep PyTorch's defaults (as released).
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks.apply(_init_vit_layer)
        self.norm_pre.apply(_init_vit_layer)
        self.norm.apply(_init_vit_layer)

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """(1, C + h * w, D): the class-token embeddings, then patch embeddings resized to the grid."""
        classes = self.config.num_classes
        patches = interpolate_patch_pos_embed(self.pos_embed[:, classes:], grid)
        return torch.cat([self.pos_embed[:, :classes], patches], dim=1)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        """Backbone: tokens (B, C + N, D), attention maps (B, L, T, T), attention features (B, L, T, d), grid."""
        tokens, grid = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        x = self.norm_pre(x + self.position_embedding(grid))
        maps, features = [], []
        for block in self.blocks:
            x, attn, branch = block(x)
            maps.append(attn)
            features.append(split_heads_interleaved(branch, self.config.heads))
        if self.config.final_norm:
            x = self.norm(x)
        return x, stack_head_major(maps), stack_head_major(features), grid

    def forward(self, images: Tensor) -> WeakTrOutput:
        """(B, 3, H, W) ImageNet-normalised images -> WeakTrOutput on the (H // p, W // p) patch grid."""
        classes = self.config.num_classes
        # SemPLeS stages a/c detach the patch tokens and the AAF inputs, so the backbone gets no gradient at
        # all; running it without autograd is the same computation without storing its activations. Drop
        # path still follows train/eval mode, as in the release.
        with torch.no_grad() if self.detach_backbone else contextlib.nullcontext():
            tokens, maps, features, (height, width) = self.encode(images)
        batch = tokens.shape[0]
        class_logits = tokens[:, :classes].mean(dim=-1)
        patch_grid = tokens[:, classes:].transpose(1, 2).reshape(batch, -1, height, width)
        head_out = self.head(patch_grid)
        coarse_logits = head_out.mean(dim=(2, 3))
        coarse_cam = F.relu(head_out)
        # Both releases detach the AAF inputs, in WeakTr phase 1 as well: the attention path trains the AAF
        # only, never the backbone.
        fused = self.adaptive_attention_fusion(maps.detach(), features.detach())
        cross_attn = fused[:, :classes, classes:].reshape(batch, classes, height, width)
        # Phase 1 (as WeakTr): the fused CAM uses a detached head output, so the head learns from the
        # coarse GAP loss only. Stages a/c: the head learns through the fused and fine CAMs.
        cams = cross_attn * (coarse_cam if self.detach_backbone else coarse_cam.detach())
        patch_attn = fused[:, classes:, classes:]
        fine_cam = (patch_attn @ cams.flatten(2).transpose(1, 2)).transpose(1, 2)
        fine_cam = fine_cam.reshape(batch, classes, height, width)
        return WeakTrOutput(class_logits, coarse_logits, fine_cam.mean(dim=(2, 3)), coarse_cam, cams, fine_cam,
                            patch_attn)


def class_maps(config: WeakTrConfig, per_token: Tensor) -> Tensor:
    """(B, tokens, ...) per-class-token outputs -> (B, classes, ...) of the dataset classes (class_slots)."""
    if config.class_slots is None:
        return per_token
    return per_token[:, list(config.class_slots)]


def token_labels(config: WeakTrConfig, labels: Tensor) -> Tensor:
    """(B, classes) multi-hot labels -> (B, tokens): tokens without a class are never positive (as released)."""
    if config.class_slots is None:
        return labels
    out = labels.new_zeros((labels.shape[0], config.num_classes))
    out[:, list(config.class_slots)] = labels
    return out


def phase1_loss(output: WeakTrOutput, labels: Tensor) -> Tensor:
    """WeakTr phase 1: sum of multi-label soft-margin losses on class, coarse and fine logits."""
    labels = labels.to(output.class_logits.dtype)
    return (F.multilabel_soft_margin_loss(output.class_logits, labels)
            + F.multilabel_soft_margin_loss(output.coarse_logits, labels)
            + F.multilabel_soft_margin_loss(output.fine_logits, labels))


def is_backbone_key(key: str) -> bool:
    """True for state-dict keys of the ViT backbone (everything but the conv head and the AAF)."""
    return not key.startswith(HEAD_PREFIXES)


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """The model state of a checkpoint saved as {"model": state_dict} (DeiT, WeakTr) or a bare state dict."""
    inner = state_dict.get("model")
    return inner if isinstance(inner, Mapping) else state_dict


def _target_shapes(model_or_config: WeakTr | WeakTrConfig) -> dict[str, torch.Size]:
    """Backbone state-dict shapes of the model (built on the meta device when given a config)."""
    if isinstance(model_or_config, WeakTrConfig):
        with torch.device("meta"):
            model_or_config = WeakTr(model_or_config)
    return {key: value.shape for key, value in model_or_config.state_dict().items() if is_backbone_key(key)}


def deit_state_dict_for(model_or_config: WeakTr | WeakTrConfig, deit_state_dict: Mapping[str, Any],
                        source: str = "DeiT state dict") -> dict[str, Tensor]:
    """Backbone state dict for WeakTr from a timm/DeiT ViT checkpoint: the class token repeated C times."""
    config = model_or_config if isinstance(model_or_config, WeakTrConfig) else model_or_config.config
    state = _unwrap(deit_state_dict)
    shapes = _target_shapes(model_or_config)
    missing = [key for key in ("cls_token", "pos_embed") if key not in state]
    if missing:
        raise ValueError(f"{source}: not a ViT checkpoint, missing backbone key(s) {missing}")
    classes, width = config.num_classes, config.width
    cls_token, pos_embed = state["cls_token"], state["pos_embed"]
    # Prefix tokens of the checkpoint's position embedding: its class token, plus DeiT-distilled's dist token.
    prefix = cls_token.shape[1] + (state["dist_token"].shape[1] if "dist_token" in state else 0)
    patches = pos_embed.shape[1] - prefix
    side = math.isqrt(max(patches, 0))
    if cls_token.shape[-1] != width or pos_embed.shape[-1] != width or patches < 1 or side * side != patches:
        raise ValueError(f"{source}: cls_token {tuple(cls_token.shape)} / pos_embed {tuple(pos_embed.shape)} "
                         f"do not fit width {width} with a square patch grid")
    patch_pos = pos_embed[:, prefix:]
    if side != config.grid:
        # The release resizes a foreign grid bicubically to exact size once, at load time.
        patch_pos = F.interpolate(patch_pos.reshape(1, side, side, width).permute(0, 3, 1, 2).float(),
                                  size=(config.grid, config.grid), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, config.grid ** 2, width).to(pos_embed.dtype)
    out = {
        # Every class token starts as DeiT's single class token, with its position embedding.
        "cls_token": cls_token[:, :1].repeat(1, classes, 1),
        "pos_embed": torch.cat([pos_embed[:, :1].repeat(1, classes, 1), patch_pos], dim=1),
    }
    problems = []
    for key, shape in shapes.items():
        if key in out:
            continue
        if key not in state:
            problems.append(f"{key} missing")
        elif tuple(state[key].shape) != tuple(shape):
            problems.append(f"{key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
        else:
            out[key] = state[key]
    if problems:
        raise ValueError(f"{source}: does not fit the WeakTr backbone: " + "; ".join(problems))
    dropped = sorted(set(state) - set(out))
    if dropped:
        log.debug("%s: dropped keys not in the WeakTr backbone: %s", source, dropped)
    return out


def load_deit(model: WeakTr, path_or_state_dict: str | os.PathLike | Mapping[str, Any],
              sha256: str | None = None) -> list[str]:
    """Load DeiT (timm ViT) weights into the backbone; return the keys left at init (conv head, AAF)."""
    if isinstance(path_or_state_dict, Mapping):
        source, state = "DeiT state dict", path_or_state_dict
    else:
        source = os.fspath(path_or_state_dict)
        if sha256:
            check_sha256(source, sha256)
        state = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(f"{source}: expected a state dict or {{'model': state_dict}}, got {type(state).__name__}")
    converted = deit_state_dict_for(model, state, source=source)
    result = model.load_state_dict(converted, strict=False)
    # deit_state_dict_for covers every backbone key, so only the head and the AAF can remain.
    if result.unexpected_keys or any(is_backbone_key(key) for key in result.missing_keys):
        raise RuntimeError(f"{source}: backbone keys not loaded: missing {result.missing_keys}, "
                           f"unexpected {result.unexpected_keys}")
    return list(result.missing_keys)


def load_weaktr_checkpoint(path: str | os.PathLike, config: WeakTrConfig, sha256: str | None = None) -> WeakTr:
    """A trained WeakTr as the release saves it (``{"model": state_dict, ...}`` or a bare state dict), strictly.

    The release's parameter names are this module's, so every key must match in name and shape; its
    training state beside ``model`` (optimiser, scheduler, argparse namespace) is not read.
    """
    source = os.fspath(path)
    if sha256:
        check_sha256(source, sha256)
    # The release's checkpoints also pickle their argparse.Namespace; allow that plain class, nothing else.
    with torch.serialization.safe_globals([argparse.Namespace]):
        saved = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(saved, Mapping):
        raise ValueError(f"{source}: expected a WeakTr state dict or {{'model': state_dict}}, "
                         f"got {type(saved).__name__}")
    state = _unwrap(saved)
    model = WeakTr(config)
    expected = model.state_dict()
    problems = [f"{key} missing" for key in expected if key not in state]
    problems += [f"unexpected {key}" for key in state if key not in expected]
    problems += [f"{key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
                 for key, value in expected.items() if key in state and state[key].shape != value.shape]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ValueError(f"{source}: not a WeakTr checkpoint for this geometry ({config.num_classes} class "
                         f"tokens, width {config.width}, depth {config.depth}): {shown}")
    model.load_state_dict(state, strict=True)
    return model


def clip_visual_as_vit(state: Mapping[str, Tensor], prefix: str = "visual.") -> dict[str, Tensor]:
    """An open_clip ViT image tower (``visual.*`` keys) renamed to timm ViT keys, for ``pre_norm`` WeakTrs.

    CLIP's tower is a pre-norm ViT like DeiT with three differences: a LayerNorm before the first block
    (``ln_pre`` -> ``norm_pre``), a bias-free patch convolution (bias 0 here), and LayerNorm eps 1e-5.
    Its fused in-projection stacks q, k, v like timm's ``qkv``, and both split heads contiguously.
    """
    def get(key: str) -> Tensor:
        if prefix + key not in state:
            raise ValueError(f"CLIP state dict: missing {prefix + key} (not an open_clip ViT image tower)")
        return state[prefix + key]

    conv = get("conv1.weight")
    out = {
        "patch_embed.proj.weight": conv,
        "patch_embed.proj.bias": torch.zeros(conv.shape[0], dtype=conv.dtype),
        "cls_token": get("class_embedding").reshape(1, 1, -1),
        "pos_embed": get("positional_embedding").unsqueeze(0),
        "norm_pre.weight": get("ln_pre.weight"),
        "norm_pre.bias": get("ln_pre.bias"),
        "norm.weight": get("ln_post.weight"),
        "norm.bias": get("ln_post.bias"),
    }
    names = {"ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
             "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    block_prefix = prefix + "transformer.resblocks."
    for key, value in state.items():
        if not key.startswith(block_prefix):
            continue
        index, rest = key[len(block_prefix):].split(".", 1)
        for clip_name, vit_name in names.items():
            if rest.startswith(clip_name):
                out[f"blocks.{index}.{vit_name}{rest[len(clip_name):]}"] = value
                break
    return out


def trainable_parameters(model: WeakTr, stage: str) -> list[nn.Parameter]:
    """Parameters to optimise: all in "phase1"; only the conv head and the AAF in "match"/"refine"."""
    if stage == "phase1":
        return list(model.parameters())
    if stage in ("match", "refine"):
        # The release hands every parameter to AdamW, which skips those whose grad is None (no step, no
        # weight decay); handing only the parameters that learn gives the same updates with less state.
        return [*model.head.parameters(), *model.adaptive_attention_fusion.parameters()]
    raise ValueError(f"trainable_parameters: unknown stage {stage!r} (known: {list(STAGES)})")
