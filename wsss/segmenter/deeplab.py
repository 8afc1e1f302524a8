"""DeepLabV2: a dilated ResNet (output stride 8), an ASPP head with summed branches, and the MSC wrapper.

The backbone is assembled from torchvision's own `BasicBlock` / `Bottleneck` modules and keeps
torchvision's parameter names (`conv1`, `bn1`, `layer1.0.conv1`, ..., `downsample.0`), so ImageNet
checkpoints load without renaming. Building it ourselves (instead of calling `torchvision.models.resnetXX`)
is what allows the `width` option and dilation in BasicBlock, which torchvision refuses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet as tv_resnet

# name -> (block type, blocks per stage)
ARCHITECTURES: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (tv_resnet.BasicBlock, (2, 2, 2, 2)),
    "resnet34": (tv_resnet.BasicBlock, (3, 4, 6, 3)),
    "resnet50": (tv_resnet.Bottleneck, (3, 4, 6, 3)),
    "resnet101": (tv_resnet.Bottleneck, (3, 4, 23, 3)),
}

# torchvision weight enums, used only to know the file names torch.hub would have cached
_TV_WEIGHTS = {
    "resnet18": tv_resnet.ResNet18_Weights,
    "resnet34": tv_resnet.ResNet34_Weights,
    "resnet50": tv_resnet.ResNet50_Weights,
    "resnet101": tv_resnet.ResNet101_Weights,
}

BN_MODES = ("frozen", "train")


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics and never trains its affine part."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, track_running_stats=True)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.training = False

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        """Ignore `mode`: the layer stays in eval mode so `.train()` on the parent cannot unfreeze it."""
        return super().train(False)


def _norm_layer(bn: str) -> type[nn.BatchNorm2d]:
    """Return the normalisation class for a `bn` mode."""
    if bn == "frozen":
        return FrozenBatchNorm2d
    if bn == "train":
        return nn.BatchNorm2d
    raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")


def _dilate_block(block: nn.Module, dilation: int) -> None:
    """Give every 3x3 convolution of a residual block the dilation `dilation` (padding = dilation)."""
    for conv in block.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation, dilation)


class DilatedResNet(nn.Module):
    """ResNet trunk with layer3/layer4 dilated by 2/4 instead of strided: output stride 8."""

    def __init__(
        self,
        arch: str = "resnet101",
        width: int | None = None,
        bn: str = "frozen",
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"backbone must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
        width = 64 if width is None else int(width)
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        block, counts = ARCHITECTURES[arch]
        norm = _norm_layer(bn)
        self.arch, self.width = arch, width

        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        # deeplab-pytorch (Caffe) pools with ceil_mode=True; torchvision with floor. Tied to the caffe flag.
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=stride_in_1x1)

        inplanes = width
        # (channel multiplier, stride, dilation) per stage; dilation replaces the last two strides
        for i, (n, mult, stride, dilation) in enumerate(zip(counts, (1, 2, 4, 8), (1, 2, 1, 1), (1, 1, 2, 4))):
            planes = width * mult
            out = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False), norm(out)
                )
            blocks = [block(inplanes, planes, stride, downsample, norm_layer=norm)]
            blocks += [block(out, planes, norm_layer=norm) for _ in range(1, n)]
            if dilation > 1:
                # every block of the stage is dilated, as in DeepLabV2 (torchvision keeps the first
                # block of a dilated stage at the previous dilation; the COCO-init weights expect this)
                for b in blocks:
                    _dilate_block(b, dilation)
            if stride_in_1x1 and stride != 1 and block is tv_resnet.Bottleneck:
                # MSRA/Caffe ResNet strides in the first 1x1 conv, torchvision (v1.5) in the 3x3 conv
                blocks[0].conv1.stride, blocks[0].conv2.stride = (stride, stride), (1, 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out
        self.out_channels = inplanes
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's ResNet initialisation (He-normal convs, unit BN)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, out_channels, ceil(H/8), ceil(W/8)) for torchvision-style pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPP(nn.Module):
    """DeepLabV2 ASPP classifier: parallel dilated 3x3 convs producing class logits, summed."""

    def __init__(self, in_channels: int, n_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        if not rates:
            raise ValueError("ASPP needs at least one dilation rate")
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, n_classes, kernel_size=3, padding=int(r), dilation=int(r), bias=True) for r in rates
        )
        for conv in self.branches:
            # deeplab-pytorch / Caffe init of the classifier
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the branch outputs (DeepLabV2; V3 would concatenate and project)."""
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """Dilated ResNet + ASPP; logits at output stride 8."""

    def __init__(
        self,
        backbone: str = "resnet101",
        n_classes: int = 21,
        rates: Sequence[int] = (6, 12, 18, 24),
        width: int | None = None,
        bn: str = "frozen",
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        self.n_classes = int(n_classes)
        self.backbone = DilatedResNet(backbone, width=width, bn=bn, stride_in_1x1=stride_in_1x1)
        self.aspp = ASPP(self.backbone.out_channels, n_classes, rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes, ceil(H/8), ceil(W/8))."""
        return self.aspp(self.backbone(x))


class MSC(nn.Module):
    """Multi-scale inputs: the base model runs at scale 1 and at each extra scale; logits fused by max.

    Training returns `[full, *per-scale logits at their own size, max]` (the loss resizes labels to each);
    eval returns the max over the full logits and the per-scale logits resized to the full logit size.
    """

    def __init__(self, base: nn.Module, scales: Sequence[float] = (0.5, 0.75)) -> None:
        super().__init__()
        self.base = base
        self.scales = tuple(float(s) for s in scales)

    @property
    def n_classes(self) -> int:
        """Number of output classes of the wrapped model."""
        return self.base.n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """See the class docstring."""
        full = self.base(x)
        size = full.shape[-2:]
        pyramid = [
            self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)) for s in self.scales
        ]
        resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.stack([full, *resized]).amax(dim=0)
        if self.training:
            return [full, *pyramid, fused]
        return fused


def build_deeplab(
    backbone: str = "resnet101",
    n_classes: int = 21,
    *,
    rates: Sequence[int] = (6, 12, 18, 24),
    width: int | None = None,
    bn: str = "frozen",
    msc_scales: Sequence[float] | None = (0.5, 0.75),
    stride_in_1x1: bool = False,
) -> nn.Module:
    """DeepLabV2, wrapped in MSC unless `msc_scales` is empty/None (the 1.0 scale is always included)."""
    model = DeepLabV2(backbone, n_classes, rates, width=width, bn=bn, stride_in_1x1=stride_in_1x1)
    extra = [s for s in (msc_scales or ()) if float(s) != 1.0]
    return MSC(model, extra) if extra else model


def base_model(model: nn.Module) -> DeepLabV2:
    """The DeepLabV2 inside an optional MSC wrapper."""
    inner = model.base if isinstance(model, MSC) else model
    if not isinstance(inner, DeepLabV2):
        raise TypeError(f"expected DeepLabV2 or MSC(DeepLabV2), got {type(model).__name__}")
    return inner


# ----------------------------------------------------------------------------------------------------
# Pretrained weights
# ----------------------------------------------------------------------------------------------------

_DEEPLAB_BRANCH = {"reduce": ("conv1", "bn1"), "conv3x3": ("conv2", "bn2"), "increase": ("conv3", "bn3")}


def _unwrap_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (plain state dict or {'state_dict'|'model': ...})."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return dict(obj)


def _strip_prefixes(key: str) -> str:
    """Remove wrapper prefixes (DataParallel, MSC, old deeplab-pytorch 'scale.')."""
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "base.", "scale."):
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def translate_deeplab_key(key: str) -> str | None:
    """Map a deeplab-pytorch (Caffe-converted) key to our DeepLabV2 key; None if it has no counterpart.

    deeplab-pytorch layout: `layer1.conv1.{conv,bn}` is the stem, `layer{2..5}.block{j}.{reduce,conv3x3,
    increase,shortcut|proj}.{conv,bn}.*` are the four stages, `aspp[.stages].c{i}.*` the classifier.
    """
    key = _strip_prefixes(key)
    m = re.fullmatch(r"layer1\.conv1\.(conv|bn)\.(\w+)", key)
    if m:
        return f"backbone.{'conv1' if m.group(1) == 'conv' else 'bn1'}.{m.group(2)}"
    m = re.fullmatch(r"layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut|proj)\.(conv|bn)\.(\w+)", key)
    if m:
        stage, blk, branch, kind, param = m.groups()
        prefix = f"backbone.layer{int(stage) - 1}.{int(blk) - 1}"
        if branch in ("shortcut", "proj"):
            return f"{prefix}.downsample.{0 if kind == 'conv' else 1}.{param}"
        conv, norm = _DEEPLAB_BRANCH[branch]
        return f"{prefix}.{conv if kind == 'conv' else norm}.{param}"
    m = re.fullmatch(r"aspp\.(?:stages\.)?c(\d+)\.(weight|bias)", key)
    if m:
        return f"aspp.branches.{m.group(1)}.{m.group(2)}"
    return None


def translate_torchvision_key(key: str) -> str | None:
    """Map a torchvision ResNet key to our DeepLabV2 key; None for the ImageNet fc layer."""
    key = _strip_prefixes(key)
    if key.startswith("fc."):
        return None
    if key.startswith("backbone.") or key.startswith("aspp."):
        return key
    return f"backbone.{key}"


def load_pretrained(model: nn.Module, path: str | Path, *, log=print) -> dict[str, list[str]]:
    """Load ImageNet (torchvision) or deeplab-pytorch (COCO-init / VOC) weights into a DeepLabV2 (or MSC).

    The backbone must match completely; classifier weights are loaded only when their shapes fit
    (a COCO-init file has a 91-class `fc`/ASPP that is skipped). Raises ValueError listing unmatched keys.
    Returns {'loaded', 'skipped'} key lists and the detected 'layout' ('torchvision' | 'deeplab').
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    raw = _unwrap_checkpoint(torch.load(path, map_location="cpu", weights_only=True), path)
    deeplab_format = any(re.search(r"\.block\d+\.", k) for k in raw)
    translate = translate_deeplab_key if deeplab_format else translate_torchvision_key

    net = base_model(model)
    own = net.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unmatched, skipped = [], []
    for key, value in raw.items():
        target = translate(key)
        if target is None:
            # known heads without a counterpart (ImageNet fc, DeepLabV1 fc8) are fine to drop
            (skipped if re.fullmatch(r"(?:\w+\.)*fc\d*\.\w+", _strip_prefixes(key)) else unmatched).append(key)
            continue
        if target not in own:
            unmatched.append(key)
            continue
        if own[target].shape != value.shape:
            if target.startswith("aspp."):
                skipped.append(key)  # classifier for another label set
                continue
            raise ValueError(
                f"{path}: shape mismatch for {key} -> {target}: {tuple(value.shape)} vs {tuple(own[target].shape)}"
                " (wrong backbone or width?)"
            )
        mapped[target] = value
    missing = [
        k for k in own if k.startswith("backbone.") and k not in mapped and not k.endswith("num_batches_tracked")
    ]
    if unmatched or missing:
        raise ValueError(
            f"{path}: could not map the checkpoint onto {net.backbone.arch} (width {net.backbone.width}); "
            f"unmatched checkpoint keys: {unmatched[:20]}{' ...' if len(unmatched) > 20 else ''}; "
            f"backbone keys without weights: {missing[:20]}{' ...' if len(missing) > 20 else ''}"
        )
    net.load_state_dict(mapped, strict=False)
    layout = "deeplab" if deeplab_format else "torchvision"
    log(f"loaded {len(mapped)} tensors from {path} ({layout} layout); skipped {len(skipped)}: {skipped[:8]}")
    caffe_model = net.backbone.maxpool.ceil_mode
    if deeplab_format != caffe_model:
        # the weights load either way, but their features assume the other stride placement / pooling
        log(
            f"warning: {layout}-layout weights loaded into a {'Caffe' if caffe_model else 'torchvision'}-style "
            f"ResNet; set stride_in_1x1={deeplab_format} to match how they were trained"
        )
    return {"loaded": sorted(mapped), "skipped": skipped, "layout": layout}


def imagenet_candidates(arch: str) -> list[Path]:
    """Files in the torch hub cache where torchvision's ImageNet weights for `arch` would be."""
    if arch not in _TV_WEIGHTS:
        raise ValueError(f"backbone must be one of {sorted(_TV_WEIGHTS)}, got {arch!r}")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [hub / Path(w.url).name for w in _TV_WEIGHTS[arch]]


def initialise(model: nn.Module, init: str, init_path: str | Path | None = None, *, log=print) -> dict | None:
    """Apply `init` in {'imagenet', 'coco', 'none'} to a freshly built DeepLabV2/MSC; never downloads.

    Returns `load_pretrained`'s report, or None for 'none'.
    """
    net = base_model(model)
    if init == "none":
        return None
    if init == "imagenet":
        if net.backbone.width != 64:
            raise ValueError(f"init 'imagenet' needs the standard width 64, got width={net.backbone.width}")
        if init_path is not None:
            return load_pretrained(model, init_path, log=log)
        candidates = imagenet_candidates(net.backbone.arch)
        for c in candidates:
            if c.is_file():
                return load_pretrained(model, c, log=log)
        raise FileNotFoundError(
            f"ImageNet weights for {net.backbone.arch} not found; looked in: {[str(c) for c in candidates]}. "
            "Set segmenter init_path to a torchvision ResNet checkpoint (nothing is downloaded)."
        )
    if init == "coco":
        if init_path is None:
            raise ValueError("init 'coco' needs init_path: a deeplab-pytorch COCO-init checkpoint (.pth)")
        return load_pretrained(model, init_path, log=log)
    raise ValueError(f"init must be 'imagenet', 'coco' or 'none', got {init!r}")
