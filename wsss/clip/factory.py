"""CLIP construction and loading: open_clip CLIP from a config dict, an OpenAI archive, a state dict or a tag."""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, convert_weights_to_lp, set_model_preprocess_cfg

from wsss.clip import looks_like_path
from wsss.devices import default_device
from wsss.digests import check_sha256

__all__ = [
    "build_clip",
    "config_from_openai_state_dict",
    "load_clip",
    "model_dtype",
    "patch_size",
    "weights_origin",
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
    device = default_device(device)
    if precision == "fp16" and device.type != "cuda":
        log.info("precision fp16 requested on %s: using fp32 (fp16 is only used on CUDA)", device)
        precision = "fp32"
    # fp16 models need LayerNormFp32 (cast to fp32 inside the norm), which is chosen at construction time
    cast_dtype = torch.float16 if precision == "fp16" else None

    if pretrained is not None and (os.path.exists(pretrained) or looks_like_path(str(pretrained))):
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights file not found: {path}")
        if sha256:
            check_sha256(path, sha256)
        state_dict, is_torchscript = _read_checkpoint(path)
        origin = weights_origin(state_dict, is_torchscript)
        for key in _OPENAI_EXTRA_KEYS + _NON_PERSISTENT_KEYS:
            state_dict.pop(key, None)
        cfg, source = (model_cfg, "model_cfg") if model_cfg is not None else (_named_config(model), model)
        if cfg is None:
            cfg, source = config_from_openai_state_dict(state_dict), "the config inferred from the weights"
        cfg = dict(cfg, quick_gelu=_choose_quick_gelu(bool(cfg.get("quick_gelu", False)), origin, source, path))
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
        log.info("CLIP %s:%s: building %s, as open_clip's record of these weights says", model, tag,
                 "QuickGELU" if tag_cfg.get("quick_gelu", False) else "the model's own activation")
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


def weights_origin(state_dict: dict, is_torchscript: bool) -> str:
    """"openai" for OpenAI's TorchScript archive or a state dict taken from it (it keeps the archive's
    input_resolution / context_length / vocab_size entries), else "unknown".

    A state dict re-saved from a plain module cannot be told apart: OpenAI's and open_clip's CLIP use the
    same parameter names, and open_clip's own weights (LAION, DataComp) are trained with GELU.
    """
    if is_torchscript or all(key in state_dict for key in _OPENAI_EXTRA_KEYS):
        return "openai"
    return "unknown"


def _choose_quick_gelu(configured: bool, origin: str, name: str, path: Path) -> bool:
    """The activation to build for local weights, logged: OpenAI's weights get QuickGELU whatever the name says."""
    if origin == "openai":
        if configured:
            log.info("CLIP weights %s are OpenAI's: building QuickGELU", path)
        else:
            log.warning("CLIP weights %s are OpenAI's, trained with QuickGELU: building QuickGELU although %r "
                        "names GELU (name the model '<name>-quickgelu' to say so)", path, name)
        return True
    if configured:
        log.info("CLIP weights %s: building QuickGELU, as %r says (right for OpenAI's weights and for open_clip's "
                 "-quickgelu releases)", path, name)
    else:
        log.warning("CLIP weights %s carry no mark of their origin: building GELU, as %r says. OpenAI's weights "
                    "need QuickGELU: give OpenAI's TorchScript archive, or name the model '<name>-quickgelu'",
                    path, name)
    return configured


def _named_config(model: str | None) -> dict | None:
    """open_clip's packaged config for a model name (a copy), or None; never touches the network."""
    if not model or ":" in model:
        return None
    return open_clip.get_model_config(model)


def model_dtype(model: CLIP) -> torch.dtype:
    """Compute dtype of the image tower (fp16 for OpenAI-style half weights, else fp32)."""
    return model.visual.conv1.weight.dtype


def patch_size(model: CLIP) -> int:
    """Square patch size of the ViT image tower."""
    ph, pw = model.visual.patch_size
    if ph != pw:
        raise ValueError(f"non-square patches {ph}x{pw} are not supported")
    return int(ph)
