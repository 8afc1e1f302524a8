"""Segmenter training: SGD + poly LR on DeepLabV2(-MSC), checkpoints written atomically, exact resume.

Determinism. Nothing in the data path has hidden state: the sample at global position p (iteration
it, slot k; p = it * batch_size * grad_accum + k) is `perm_e[p mod N]` where `perm_e` is a permutation
seeded by (seed, epoch e = p div N), and its augmentation draws from a generator seeded by (seed, it, k).
A run resumed from a checkpoint at iteration n therefore sees exactly the batches an uninterrupted run
sees from n on, whatever `num_workers` is; with model, optimizer (momentum), scheduler, AMP scaler and
RNG states restored, the final weights on CPU are bit-identical.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from wsss.checkpoints import HISTORY_NAME, mix_seed, rng_state, save_checkpoint, set_rng_state, write_history
from wsss.devices import default_device
from wsss.segmenter.augment import NORMALISATIONS, augment, normalise
from wsss.segmenter.deeplab import ARCHITECTURES, BN_MODES, base_model, build_deeplab, initialise
from wsss.segmenter.losses import IGNORE_INDEX, LOSSES, segmentation_loss
from wsss.segmenter.schedule import PolyLR, param_groups

CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = "final.pt"
_FORMAT = "wsss-segmenter/1"

# fields that may change between an interrupted run and its resumption without changing the result
_RESUME_FREE = {"num_workers", "checkpoint_every", "log_every", "init_path"}


@dataclass
class SegmenterConfig:
    """Everything that defines a segmenter training run (deeplab-pytorch VOC defaults)."""

    backbone: str = "resnet101"
    n_classes: int = 21
    width: int | None = None  # base channel count (64 = standard ResNet); smaller thins every stage
    rates: tuple[int, ...] = (6, 12, 18, 24)
    init: str = "imagenet"  # imagenet | coco | none
    init_path: str | None = None
    msc_scales: tuple[float, ...] = (0.5, 0.75)  # extra MSC input scales besides 1.0; () = no MSC
    stride_in_1x1: bool | None = None  # Caffe-style ResNet (stride in the 1x1 conv); None = True for coco
    lr: float = 2e-4  # CLIP-ES issue #7: 2e-4 ImageNet init, 2.5e-5 COCO init
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_mult: tuple[float, ...] = (1.0, 10.0, 20.0)  # backbone, ASPP weights, ASPP biases
    power: float = 0.9
    lr_step_every: int = 10
    iterations: int = 20000
    batch_size: int = 5
    grad_accum: int = 2
    crop: int = 321
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    scale_range: tuple[float, float] | None = None  # if set, scale ~ U(lo, hi) instead of `scales`
    flip: bool = True
    normalisation: str = "bgr_mean"  # bgr_mean | rgb_imagenet
    loss: str = "balanced_ce"  # ce | balanced_ce (pitfall 21: balanced for ImageNet init)
    bn: str = "frozen"  # frozen | train
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 1000
    log_every: int = 20
    amp: bool = True  # only ever used on CUDA
    ignore_index: int = IGNORE_INDEX

    @classmethod
    def from_dict(cls, d: Mapping) -> "SegmenterConfig":
        """Build from a plain mapping (YAML); unknown keys raise ValueError; lists become tuples."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown segmenter config keys: {unknown}")
        kw = dict(d)
        for key in ("rates", "msc_scales", "scales", "scale_range", "lr_mult"):
            if key in kw and kw[key] is not None:
                kw[key] = tuple(kw[key])
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        """Plain dict (tuples as lists) that `from_dict` reads back."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def validate(self) -> None:
        """Raise ValueError naming the first invalid parameter."""
        if self.backbone not in ARCHITECTURES:
            raise ValueError(f"backbone must be one of {sorted(ARCHITECTURES)}, got {self.backbone!r}")
        if self.init not in ("imagenet", "coco", "none"):
            raise ValueError(f"init must be imagenet | coco | none, got {self.init!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, got {self.bn!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        for name in (
            "n_classes",
            "iterations",
            "batch_size",
            "grad_accum",
            "crop",
            "lr_step_every",
            "checkpoint_every",
            "log_every",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if len(self.lr_mult) != 3:
            raise ValueError(f"lr_mult must be [backbone, classifier_weight, classifier_bias], got {self.lr_mult}")
        if self.scale_range is not None and len(self.scale_range) != 2:
            raise ValueError(f"scale_range must be [lo, hi], got {self.scale_range}")

    @property
    def caffe_resnet(self) -> bool:
        """Whether to build the Caffe/MSRA ResNet variant (default: only for the COCO-init weights)."""
        return self.init == "coco" if self.stride_in_1x1 is None else bool(self.stride_in_1x1)

    @property
    def samples_per_iteration(self) -> int:
        """Images consumed by one optimiser update."""
        return self.batch_size * self.grad_accum


def build_model(cfg: SegmenterConfig) -> nn.Module:
    """The (MSC-wrapped) DeepLabV2 described by `cfg`, randomly initialised."""
    return build_deeplab(
        cfg.backbone,
        cfg.n_classes,
        rates=cfg.rates,
        width=cfg.width,
        bn=cfg.bn,
        msc_scales=cfg.msc_scales,
        stride_in_1x1=cfg.caffe_resnet,
    )


# ----------------------------------------------------------------------------------------------------
# Data: stateless order and augmentation
# ----------------------------------------------------------------------------------------------------


def _as_sample(item: object, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(image uint8 HxWx3, label HxW, name) from a dataset item: (image, label[, ...]) or a dict."""
    if isinstance(item, Mapping):
        image, label = item.get("image"), item.get("label")
        name = str(item.get("id", index))
    elif isinstance(item, (tuple, list)) and len(item) >= 2:
        image, label = item[0], item[1]
        name = str(index)
    else:
        raise ValueError(f"dataset item {index}: expected (image, label) or a dict with 'image' and 'label'")
    image = image.numpy() if torch.is_tensor(image) else np.asarray(image)
    label = label.numpy() if torch.is_tensor(label) else np.asarray(label)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"sample {name}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"sample {name}: label shape {label.shape} != image size {image.shape[:2]}")
    return image, label, name


class IterationBatches(torch.utils.data.Dataset):
    """Item `it` = the list of `grad_accum` augmented micro-batches (images, labels) of iteration `it`."""

    def __init__(self, dataset: torch.utils.data.Dataset, cfg: SegmenterConfig) -> None:
        self.dataset, self.cfg = dataset, cfg
        self.n = len(dataset)
        if self.n == 0:
            raise ValueError("training dataset is empty")
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.cfg.iterations

    def index_at(self, position: int) -> int:
        """Dataset index at a global sample position (one fresh permutation per epoch)."""
        epoch, offset = divmod(position, self.n)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, epoch, 0x0D47A))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return int(self._perm[1][offset])

    def sample(self, iteration: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented (image (3,crop,crop) float32, label (crop,crop) int64) for one slot of an iteration."""
        cfg = self.cfg
        index = self.index_at(iteration * cfg.samples_per_iteration + slot)
        image, label, name = _as_sample(self.dataset[index], index)
        label_t = torch.from_numpy(label.astype(np.int64))
        bad = (label_t >= cfg.n_classes) & (label_t != cfg.ignore_index) | (label_t < 0)
        if bool(bad.any()):
            raise ValueError(
                f"sample {name}: label values {sorted(set(label_t[bad].tolist()))[:10]} outside 0..{cfg.n_classes - 1}"
                f" and not {cfg.ignore_index}"
            )
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, iteration, slot, 0xA06))
        return augment(
            normalise(image, cfg.normalisation),
            label_t,
            crop=cfg.crop,
            generator=g,
            scales=cfg.scales,
            scale_range=cfg.scale_range,
            flip=cfg.flip,
            ignore_index=cfg.ignore_index,
        )

    def __getitem__(self, iteration: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        micro = []
        for a in range(cfg.grad_accum):
            pairs = [self.sample(iteration, a * cfg.batch_size + b) for b in range(cfg.batch_size)]
            micro.append((torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])))
        return micro


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------


def _check_resume_config(saved: Mapping, cfg: SegmenterConfig, path: Path) -> None:
    """Raise ValueError if the checkpoint was written by a run with a result-changing different config."""
    now = cfg.to_dict()
    diff = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise ValueError(f"{path}: cannot resume, the config changed ({detail}); use a fresh out_dir")


def load_segmenter(path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """Rebuild the model saved by `train_segmenter` (final weights or a checkpoint), in eval mode."""
    return load_predictor(path, device)[0]


def load_predictor(path: str | Path, device: str | torch.device | None = None) -> tuple[nn.Module, str]:
    """(model in eval mode, its input normalisation) from a file written by `train_segmenter`, read once."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmenter weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a segmenter file written by wsss.segmenter.train")
    cfg = SegmenterConfig.from_dict(state["config"])
    model = build_model(cfg)
    base_model(model).load_state_dict(state["model"])
    model.to(torch.device(device) if device is not None else "cpu")
    return model.eval(), cfg.normalisation


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def train_segmenter(
    dataset: torch.utils.data.Dataset,
    cfg: SegmenterConfig,
    out_dir: Path,
    *,
    device: str | torch.device | None = None,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> Path:
    """Train (or resume training of) a DeepLabV2 segmenter; returns `out_dir/final.pt`.

    `dataset[i]` returns (image uint8 RGB (H, W, 3), label (H, W) ints with 255 = ignore), or a dict with
    'image', 'label' and optionally 'id'. If `out_dir/checkpoint.pt` exists, training resumes from it.
    `stop_after=n` stops once iteration n is done and checkpointed (returns the checkpoint path);
    `callback(iteration, {'loss', 'lr'})` runs after every update (after its checkpoint, if any).
    """
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, final_path = out_dir / CHECKPOINT_NAME, out_dir / FINAL_NAME
    device = default_device(device)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    model = build_model(cfg)
    state = None
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("format") != _FORMAT:
            raise ValueError(f"{ckpt_path}: not a segmenter checkpoint")
        _check_resume_config(state["config"], cfg, ckpt_path)
        if state["dataset_len"] != len(dataset):
            raise ValueError(
                f"{ckpt_path}: written for a dataset of {state['dataset_len']} samples, got {len(dataset)}"
            )
        base_model(model).load_state_dict(state["model"])
    else:
        report = initialise(model, cfg.init, cfg.init_path, log=log)
        if report is not None and report["layout"] == "torchvision" and cfg.normalisation != "rgb_imagenet":
            log(
                "warning: torchvision ImageNet weights were trained on RGB inputs with ImageNet mean/std; "
                "normalisation=rgb_imagenet matches them (bgr_mean matches the Caffe/deeplab-pytorch weights)"
            )
        if cfg.bn == "frozen" and cfg.init == "none":
            log(
                "warning: bn=frozen with init=none keeps random BN statistics (every BN is an identity); "
                "bn=train is recommended when training from scratch"
            )
    model.to(device)

    optimizer = torch.optim.SGD(
        param_groups(model, cfg.lr, cfg.weight_decay, cfg.lr_mult), lr=cfg.lr, momentum=cfg.momentum
    )
    scheduler = PolyLR(optimizer, cfg.iterations, cfg.power, cfg.lr_step_every)
    use_amp = bool(cfg.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start = 0
    history: list[dict[str, float]] = []  # one row per logging window: loss_history.csv beside the checkpoints
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start = int(state["iteration"])
        history = list(state.get("history", []))
        log(f"resuming from {ckpt_path} at iteration {start}/{cfg.iterations}")

    def checkpoint(iteration: int) -> None:
        save_checkpoint(
            {
                "format": _FORMAT,
                "config": cfg.to_dict(),
                "iteration": iteration,
                "model": base_model(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "history": history,
                "dataset_len": len(dataset),
                # the data order is a pure function of (seed, iteration); recorded for inspection
                "data_order": {
                    "seed": cfg.seed,
                    "next_iteration": iteration,
                    "samples_per_iteration": cfg.samples_per_iteration,
                },
            },
            ckpt_path,
        )
        write_history(history, out_dir / HISTORY_NAME)

    end = cfg.iterations if stop_after is None else min(cfg.iterations, int(stop_after))
    if start < end:
        batches = IterationBatches(dataset, cfg)
        loader = torch.utils.data.DataLoader(
            batches,
            batch_size=None,
            sampler=range(start, end),
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        model.train()
        t0, window = time.perf_counter(), []
        for it, micro in enumerate(loader, start=start):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for images, labels in micro:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    outputs = model(images)
                loss = segmentation_loss(outputs, labels, cfg.loss, cfg.ignore_index) / cfg.grad_accum
                scaler.scale(loss).backward()
                total += float(loss.detach())
            if not math.isfinite(total):
                raise FloatingPointError(
                    f"segmenter loss is {total} at iteration {it + 1}; try loss=balanced_ce or a lower lr"
                )
            lr_used = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            done = it + 1
            window.append(total)
            if done % cfg.log_every == 0 or done == end:
                rate = len(window) / max(time.perf_counter() - t0, 1e-9)
                images_per_s = rate * cfg.samples_per_iteration
                loss_mean = sum(window) / len(window)
                log(f"iter {done}/{cfg.iterations} loss {loss_mean:.4f} lr {lr_used:.3g} "
                    f"{images_per_s:.1f} img/s ETA {(cfg.iterations - done) / rate:.0f} s")
                history.append({"iteration": done, "loss": loss_mean, "lr": lr_used, "images_per_s": images_per_s})
                t0, window = time.perf_counter(), []
            if done % cfg.checkpoint_every == 0 or done == end:
                checkpoint(done)
            if callback is not None:
                callback(done, {"loss": total, "lr": lr_used})
        start = end

    if start < cfg.iterations:
        return ckpt_path
    if not final_path.is_file():
        save_checkpoint(
            {
                "format": _FORMAT,
                "config": cfg.to_dict(),
                "iteration": cfg.iterations,
                "model": base_model(model).state_dict(),
            },
            final_path,
        )
        log(f"wrote {final_path}")
    return final_path
