"""SemPLeS training: WeakTr phase 1, then stages a (match), b (prompts) and c (refine), each resumable.

Every stage is one epoch loop (``run_epochs``) around a stage-specific loss step. AdamW over the
parameters that learn, a per-epoch cosine schedule (timm's, with optional linear warm-up, stepped after
each epoch as the release does, so every epoch runs the previous epoch's rate), and a
checkpoint after every epoch holding the trainable state, the optimiser, the loss history and the
settings digest: a rerun after a kill resumes at the next epoch and, on CPU, ends bit-identical to an
uninterrupted run (augmentations are seeded per sample and epoch, ``data.LabelledImages``).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wsss.atomic import atomic_output
from wsss.checkpoints import HISTORY_NAME, mix_seed, save_checkpoint, write_history
from wsss.clip.configured import load_configured_clip
from wsss.devices import default_device
from wsss.digests import params_digest
from wsss.methods.semples import weaktr_geometry
from wsss.methods.semples.data import LabelledImages, epoch_order, training_transform
from wsss.methods.semples.losses import masked_views, match_loss, positive_pairs, prompt_loss, refine_loss, soft_masks
from wsss.methods.semples.prompts import encode_with_prompts, init_prompts, load_vocabulary, nearest_words, prompt_tokens
from wsss.methods.semples.weaktr import (
    WeakTr,
    WeakTrConfig,
    class_maps,
    clip_visual_as_vit,
    load_deit,
    load_weaktr_checkpoint,
    phase1_loss,
    token_labels,
    trainable_parameters,
)

log = logging.getLogger(__name__)

MODEL_FORMAT = "wsss-semples-weaktr/1"
PROMPTS_FORMAT = "wsss-semples-prompts/1"
CHECKPOINT_NAME = "checkpoint.pt"
LR_BATCH = 512  # the release scales every lr argument by batch_size / 512
PRECISIONS = ("faithful", "fp32")
# A training step: (images, labels) -> (loss, its terms for the log)
Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Schedule:
    """One stage's optimisation: epochs, batch, the effective lr and timm's per-epoch cosine with warm-up."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    min_lr: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 0.0

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> Schedule:
        """A stage's config section (``lr`` is the release's argument, scaled here by batch_size / 512)."""
        batch = int(section["batch_size"])
        return cls(
            epochs=int(section["epochs"]),
            batch_size=batch,
            lr=float(section["lr"]) * batch / LR_BATCH,
            weight_decay=float(section["weight_decay"]),
            min_lr=float(section.get("min_lr", 0.0)),
            warmup_epochs=int(section.get("warmup_epochs", 0)),
            warmup_lr=float(section.get("warmup_lr", 0.0)),
        )

    def scheduled_lr(self, t: int) -> float:
        """timm's CosineLRScheduler value at step t (t_initial = epochs, linear warm-up, no cycles)."""
        if t < self.warmup_epochs:
            return self.warmup_lr + t * (self.lr - self.warmup_lr) / self.warmup_epochs
        if t >= self.epochs:
            return self.min_lr
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t / self.epochs))

    def lr_at(self, epoch: int) -> float:
        """The learning rate the release trains a 0-based epoch at: the schedule's value one epoch behind.

        The release calls ``lr_scheduler.step(epoch)`` after each epoch, so epoch 0 runs at the optimiser's
        initial rate (the schedule's value at 0) and every later epoch e at the value of e - 1.
        """
        return self.scheduled_lr(max(epoch - 1, 0))


def release_fp16(precision: str, device: torch.device) -> bool:
    """Whether an instance runs the release's fp16 autocast arithmetic: precision faithful on CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision == "faithful" and device.type == "cuda"


# --------------------------------------------------------------------------------------------------
# The frozen CLIP critic


@dataclass
class Critic:
    """The frozen CLIP: image encoder for masked views, class text features, and the model for prompts."""

    model: torch.nn.Module
    tokenizer: Callable
    text: torch.Tensor  # (C, D), L2-normalised t_k
    image_size: tuple[int, int]
    # dtype of the clamped similarities (None: fp32); fp16 is the release's arithmetic under CUDA autocast
    similarity_dtype: torch.dtype | None = None

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features of (ImageNet-normalised) views, resized to the critic's input size."""
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        dtype = next(self.model.parameters()).dtype
        return F.normalize(self.model.encode_image(images.to(dtype)).float(), dim=-1)


def load_critic(critic: Mapping[str, Any], checkpoint: Sequence[str | Path], class_names: Sequence[str],
                template: str, device: torch.device, similarity_dtype: torch.dtype | None = None) -> Critic:
    """The critic CLIP, frozen, with the class text ``template.format(name)`` encoded once."""
    model, tokenizer, _, _ = load_configured_clip(critic, checkpoint, device)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        tokens = tokenizer([template.format(name) for name in class_names]).to(device)
        text = F.normalize(model.encode_text(tokens).float(), dim=-1)
    size = model.visual.image_size
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    return Critic(model, tokenizer, text, size, similarity_dtype)


# --------------------------------------------------------------------------------------------------
# Model files


def weaktr_config(method: Mapping[str, Any], tokens: Mapping[str, Any]) -> WeakTrConfig:
    """The mask generator from an instance's ``weaktr`` geometry and its class tokens (``semples.class_tokens``)."""
    return WeakTrConfig.from_dict({**weaktr_geometry(method), **tokens})


def save_model(model: WeakTr, path: str | Path, stage: str, metrics: Mapping[str, Any]) -> None:
    """A trained mask generator as a weights_only-loadable dict."""
    config = {k: getattr(model.config, k) for k in model.config.__dataclass_fields__}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_checkpoint({"format": MODEL_FORMAT, "stage": stage, "config": config, "state_dict": state,
                     "metrics": dict(metrics)}, path)


def load_model(path: str | Path, device: torch.device | str | None = None) -> WeakTr:
    """A mask generator written by ``save_model`` (eval mode)."""
    saved = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a SemPLeS mask-generator file (expected format {MODEL_FORMAT!r})")
    model = WeakTr(WeakTrConfig.from_dict(saved["config"]))
    model.load_state_dict(saved["state_dict"])
    return model.to(default_device(device)).eval()


def load_phase1(path: str | Path, imported: Mapping[str, Any] | None = None,
                device: torch.device | str | None = None) -> WeakTr:
    """The phase-1 mask generator: a file of ``train_phase1`` or, given ``imported``, one the instance imports.

    ``imported`` (``semples.imported_generator``) is the geometry an imported file (``phase1.checkpoint``,
    the release's layout) is loaded into, strictly; its digest was checked before the job started.
    """
    if imported is None:
        return load_model(path, device)
    model = load_weaktr_checkpoint(path, WeakTrConfig.from_dict(imported))
    log.info("phase 1: imported %s (%d class tokens)", path, model.config.num_classes)
    return model.to(default_device(device)).eval()


def load_prompts(path: str | Path) -> torch.Tensor:
    """The learned prompts (C, L, width) written by ``train_prompts``."""
    saved = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != PROMPTS_FORMAT:
        raise ValueError(f"{path} is not a SemPLeS prompts file (expected format {PROMPTS_FORMAT!r})")
    return saved["prompts"]


# --------------------------------------------------------------------------------------------------
# The epoch loop


def run_epochs(
    name: str,
    schedule: Schedule,
    dataset: LabelledImages,
    parameters: Sequence[torch.nn.Parameter],
    step: Step,
    state: Callable[[], dict[str, torch.Tensor]],
    load_state: Callable[[dict[str, torch.Tensor]], None],
    checkpoint_dir: str | Path,
    settings: Mapping[str, Any],
    device: torch.device,
    precision: str,
    num_workers: int,
    log_every: int = 20,
) -> list[dict[str, float]]:
    """Train ``parameters`` for the schedule's epochs, resuming from ``checkpoint_dir``; returns per-epoch losses.

    A checkpoint is resumed only when it was written with the same ``settings`` (which include the rule's
    code digest), so a rerun caused by a settings or code change starts afresh.
    """
    optimizer = torch.optim.AdamW(parameters, lr=schedule.lr, eps=1e-8, weight_decay=schedule.weight_decay)
    use_amp = release_fp16(precision, device)  # the release trains under fp16 autocast with a GradScaler
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    digest = params_digest(dict(settings))
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint_path.exists():
        saved = torch.load(str(checkpoint_path), map_location="cpu", weights_only=True)
        if saved.get("settings_digest") != digest:
            # settings or code changed since it was written: the rule reruns from the start
            log.info("%s: ignoring %s, written with other settings or code", name, checkpoint_path)
        else:
            load_state(saved["state"])
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            history, start = list(saved["history"]), int(saved["epoch"]) + 1
            log.info("%s: resuming after epoch %d from %s", name, start, checkpoint_path)
    steps_per_epoch = len(dataset) // schedule.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{name}: batch_size {schedule.batch_size} exceeds the {len(dataset)} training images")
    total_steps, began, done_steps = steps_per_epoch * schedule.epochs, time.perf_counter(), 0
    for epoch in range(start, schedule.epochs):
        lr = schedule.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        dataset.epoch = epoch
        order = epoch_order(len(dataset), dataset.seed, epoch)[: steps_per_epoch * schedule.batch_size]
        batches = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, order), batch_size=schedule.batch_size, shuffle=False,
            num_workers=num_workers, drop_last=True, persistent_workers=False,
        )
        torch.manual_seed(mix_seed(dataset.seed, epoch, 0xD40))  # drop path and other in-model randomness
        sums: dict[str, float] = {}
        for index, (images, labels) in enumerate(batches):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
                loss, terms = step(images, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            terms = {"loss": float(loss.detach()), **{k: v for k, v in terms.items() if k != "total"}}
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            done_steps += 1
            if (index + 1) % log_every == 0 or index + 1 == steps_per_epoch:
                elapsed = time.perf_counter() - began
                rate = done_steps * schedule.batch_size / elapsed
                eta = (total_steps - epoch * steps_per_epoch - index - 1) * schedule.batch_size / rate
                log.info("%s epoch %d/%d iter %d/%d %s lr %.3g %.1f img/s ETA %.0f s", name, epoch + 1,
                         schedule.epochs, index + 1, steps_per_epoch,
                         " ".join(f"{k} {v:.4f}" for k, v in terms.items()), lr, rate, eta)
        history.append({"epoch": epoch + 1, "lr": lr, **{k: v / steps_per_epoch for k, v in sums.items()}})
        save_checkpoint({"epoch": epoch, "state": state(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "history": history, "settings_digest": digest},
                        checkpoint_path)
        write_history(history, checkpoint_dir / HISTORY_NAME)
    return history


def _dataset(manifest: str | Path, num_classes: int, method: Mapping[str, Any], strong: bool) -> LabelledImages:
    return LabelledImages(manifest, num_classes, training_transform(method["augment"], strong), method["seed"])


def _model_state(model: torch.nn.Module) -> Callable[[], dict[str, torch.Tensor]]:
    return lambda: {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Stages


def train_phase1(manifest: str | Path, num_classes: int, method: Mapping[str, Any], out_path: str | Path,
                 checkpoint_dir: str | Path, code: str = "", clip_checkpoint: Sequence[str | Path] = (),
                 tokens: Mapping[str, Any] | None = None) -> None:
    """WeakTr phase 1: the whole mask generator on image-level labels (three multilabel soft-margin losses).

    ``tokens`` (``semples.class_tokens``) gives the class tokens; None: one per class, in order.
    """
    device = default_device()
    torch.manual_seed(method["seed"])
    model = WeakTr(weaktr_config(method, tokens or {"num_classes": num_classes}))
    if method["weaktr"]["init"] == "deit":
        load_deit(model, method["weaktr"]["checkpoint"], sha256=method["weaktr"]["sha256"])
    elif method["weaktr"]["init"] == "critic":
        critic, _, _, _ = load_configured_clip(method["critic"], clip_checkpoint, torch.device("cpu"))
        load_deit(model, clip_visual_as_vit(critic.state_dict()))
    model.detach_backbone = False
    model.to(device).train()

    def step(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # tokens without a class (the release's empty COCO slots) take part as never-present classes
        return phase1_loss(model(images), token_labels(model.config, labels)), {}

    history = run_epochs("phase1", Schedule.from_section(method["phase1"]), _dataset(manifest, num_classes, method, True),
                         trainable_parameters(model, "phase1"), step, _model_state(model), model.load_state_dict,
                         checkpoint_dir, {"method": method, "stage": "phase1", "code": code}, device, method["precision"],
                         method["num_workers"])
    save_model(model, out_path, "phase1", {"history": history})


def head_step(model: WeakTr, critic: Critic, mask_eps: float, lambda1: float,
              background_text: torch.Tensor | None = None, lambda3: float = 0.0) -> Step:
    """The loss step of stage a (``background_text`` None) or c: soft masks of the positive pairs, critic scores."""

    def step(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        images_index, class_index = positive_pairs(labels)
        fine_cam = class_maps(model.config, model(images).fine_cam)
        masks = soft_masks(fine_cam, images_index, class_index, tuple(images.shape[-2:]), mask_eps)
        foreground, background = masked_views(images, masks, images_index)
        v_f, v_b = critic.encode_images(foreground), critic.encode_images(background)
        if background_text is None:
            return match_loss(v_f, v_b, critic.text[class_index], lambda1, critic.similarity_dtype)
        return refine_loss(v_f, v_b, critic.text[class_index], background_text[class_index], lambda1, lambda3,
                           critic.similarity_dtype)

    return step


def prompt_step(model: WeakTr, critic: Critic, prompts: torch.Tensor, tokens: torch.Tensor, slots: slice,
                mask_eps: float, lambda2: float) -> Step:
    """The loss step of stage b: backgrounds of the frozen stage-a masks against the class prompts."""

    def step(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            images_index, class_index = positive_pairs(labels)
            fine_cam = class_maps(model.config, model(images).fine_cam)
            masks = soft_masks(fine_cam, images_index, class_index, tuple(images.shape[-2:]), mask_eps)
            v_b = critic.encode_images(masked_views(images, masks, images_index)[1])
        u = encode_with_prompts(critic.model, prompts, tokens, slots, normalize=True).float()
        return prompt_loss(v_b, critic.text[class_index], u[class_index], lambda2, critic.similarity_dtype)

    return step


def train_match(manifest: str | Path, phase1_path: str | Path, clip_checkpoint: Sequence[str | Path],
                class_names: Sequence[str], method: Mapping[str, Any], out_path: str | Path,
                checkpoint_dir: str | Path, code: str = "", imported: Mapping[str, Any] | None = None) -> None:
    """Stage a: the conv head and AAF learn masks whose foreground matches the class text and background does not.

    ``imported`` is the geometry of an imported phase-1 model (``load_phase1``); None: phase 1 was trained here.
    """
    _train_head("match", manifest, phase1_path, None, clip_checkpoint, class_names, method, out_path, checkpoint_dir,
                code, imported)


def train_refine(manifest: str | Path, phase1_path: str | Path, prompts_path: str | Path,
                 clip_checkpoint: Sequence[str | Path], class_names: Sequence[str], method: Mapping[str, Any],
                 out_path: str | Path, checkpoint_dir: str | Path, code: str = "",
                 imported: Mapping[str, Any] | None = None) -> None:
    """Stage c: stage a's losses plus pushing the foreground away from the class's learned background prompt."""
    _train_head("refine", manifest, phase1_path, prompts_path, clip_checkpoint, class_names, method, out_path,
                checkpoint_dir, code, imported)


def _critic(method: Mapping[str, Any], clip_checkpoint: Sequence[str | Path], class_names: Sequence[str],
            device: torch.device) -> Critic:
    """The instance's critic, its similarities in fp16 where the release computes them so."""
    half = release_fp16(method["precision"], device)
    return load_critic(method["critic"], clip_checkpoint, class_names, method["text"]["template"], device,
                       torch.float16 if half else None)


def _train_head(stage, manifest, phase1_path, prompts_path, clip_checkpoint, class_names, method, out_path,
                checkpoint_dir, code, imported) -> None:
    device = default_device()
    section = method[stage]
    critic = _critic(method, clip_checkpoint, class_names, device)
    model = load_phase1(phase1_path, imported, device)
    model.detach_backbone = True
    model.train()
    background_text = None
    if stage == "refine":
        prompts = load_prompts(prompts_path).to(device)
        tokens, slots = prompt_tokens(critic.tokenizer, prompts.shape[1], critic.model.context_length)
        with torch.no_grad():  # the prompts are frozen in stage c: encode them once
            background_text = encode_with_prompts(critic.model, prompts, tokens.to(device), slots,
                                                  normalize=True).float()
    lambda3 = float(section["lambda3"]) if stage == "refine" else 0.0
    step = head_step(model, critic, float(section["mask_eps"]), float(method["match"]["lambda1"]),
                     background_text, lambda3)
    history = run_epochs(stage, Schedule.from_section(section), _dataset(manifest, len(class_names), method, True),
                         trainable_parameters(model, stage), step, _model_state(model), model.load_state_dict,
                         checkpoint_dir, {"method": method, "stage": stage, "code": code}, device, method["precision"],
                         method["num_workers"])
    save_model(model, out_path, stage, {"history": history})


def train_prompts(manifest: str | Path, match_path: str | Path, clip_checkpoint: Sequence[str | Path],
                  class_names: Sequence[str], method: Mapping[str, Any], out_path: str | Path,
                  words_path: str | Path, checkpoint_dir: str | Path, code: str = "") -> None:
    """Stage b: class-specific background prompts pulled towards the stage-a masks' backgrounds, away from the class."""
    device = default_device()
    section = method["prompts"]
    critic = _critic(method, clip_checkpoint, class_names, device)
    model = load_model(match_path, device)
    model.requires_grad_(False)
    width = critic.model.token_embedding.weight.shape[1]
    generator = torch.Generator().manual_seed(mix_seed(method["seed"], 0xB))
    prompts = torch.nn.Parameter(init_prompts(len(class_names), int(section["length"]), width,
                                              mode=section["init"], generator=generator).to(device))
    tokens, slots = prompt_tokens(critic.tokenizer, int(section["length"]), critic.model.context_length)
    tokens = tokens.to(device)
    step = prompt_step(model, critic, prompts, tokens, slots, float(section["mask_eps"]), float(section["lambda2"]))
    history = run_epochs("prompts", Schedule.from_section(section),
                         _dataset(manifest, len(class_names), method, False), [prompts], step,
                         lambda: {"prompts": prompts.detach().cpu().clone()},
                         lambda saved: prompts.data.copy_(saved["prompts"].to(device)),
                         checkpoint_dir, {"method": method, "stage": "prompts", "code": code}, device, method["precision"],
                         method["num_workers"])
    save_checkpoint({"format": PROMPTS_FORMAT, "prompts": prompts.detach().cpu().clone(),
                     "class_names": list(class_names), "metrics": {"history": history}}, out_path)
    with torch.no_grad():
        features = encode_with_prompts(critic.model, prompts, tokens, slots, normalize=True).float()
        nearest = nearest_words(critic.model, critic.tokenizer, features, load_vocabulary(), k=5)
    with atomic_output(words_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "rank", "word", "cosine"])
        for name, words in zip(class_names, nearest):
            for rank, (word, cosine) in enumerate(words, 1):
                writer.writerow([name, rank, word, f"{cosine:.4f}"])
    log.info("prompts: nearest words %s", {n: [w for w, _ in ws[:3]] for n, ws in zip(class_names, nearest)})
