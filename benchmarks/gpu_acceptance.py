"""GPU acceptance run: every CUDA path of the workflow exercised, checked and measured in one command.

Nothing is downloaded: the CLIPs are open_clip models with random weights, the CLIP-ES one with its image
blocks' q and k scaled by 5 as in bench_cam_precision.py (plain random init gives near-uniform attention),
the images synthetic VOC-size JPEGs (bench_cam.py). Parts:

  1. CLIP-ES CAM stage (GradCAM -> CAA -> dense CRF, the stage functions) on --images images in every
     cam.precision mode and cam.batch_size: faithful (on CUDA OpenAI's fp16 weights, one image at a time; on
     the CPU fp32 weights with the fp16 position table), fp16 autocast (CUDA only), bf16 autocast, each
     against plain fp32 at batch size 1 on the same device: images/s, peak GPU memory, per-image Pearson r
     of the initial and refined CAMs, CRF pseudo-mask pixel agreement.
  2. SemPLeS: a few training steps of phase 1 and stages a (match), b (prompts) and c (refine) under
     autocast with a GradScaler (fp16 on CUDA; bf16 without a scaler stands in on the CPU) and the same
     steps in fp32 from the same weights and batches; then the CAM step (multi-scale + flip maps).
  3. Segmenter: a few training iterations of the preset's DeepLabV2 (AMP where its config has it, on CUDA)
     on part 1's pseudo masks, then the prediction stage; images/s of both.
  4. Workflow: tests/configs/tiny.yaml (one shard per split, without its bf16 ablation, which part 1
     measures) end to end with --workflow-profile profiles/workstation, on the GPU and, at the same time, on
     the CPU (CUDA_VISIBLE_DEVICES=""); each GPU job's log line from wsss.devices.compute_job must name the
     device the GPU slot pool gave it, and the two runs' outputs must agree within COMPARE_TOLERANCES. Both
     runs compute in fp32 (segmenter amp off, SemPLeS precision fp32, TF32 off through
     NVIDIA_TF32_OVERRIDE=0), so they differ only in summation order; parts 1-3 cover the reduced precisions.
  5. One table on stdout; --out/gpu_acceptance.json holds every figure, every check, nvidia-smi's report and
     the torch / CUDA / cuDNN versions.

Checks (the exit status is 1 when one fails): every part runs; outputs are finite, of the documented shapes
and written; the work ran on the device asked for (stage log lines, GPU memory, the slot pool's log line);
fp32 batches equal one image at a time (initial CAMs r >= 0.999); SemPLeS losses are finite, at least one
optimiser step is taken per stage and the first autocast loss is within LOSS_TOLERANCE_EPS roundings of the
fp32 one; CPU and GPU workflow outputs agree. The agreement of faithful, fp16 and bf16 with fp32 in part 1 is
reported, never checked: the official fp16 arithmetic differs strongly from fp32 on this network
(docs/precision.md).

    .venv/bin/python benchmarks/gpu_acceptance.py --out results/gpu_acceptance                 # a GPU machine
    .venv/bin/python benchmarks/gpu_acceptance.py --device cpu --quick --out /tmp/acceptance  # CPU (CI, tests)

Time: estimated at 5-6 minutes on one H100 with 16 CPU cores (part 1 about 2 min, of which the CPU's CRF
and CAA are most; parts 2 and 3 under a minute each; part 4 about 2 min), from the CPU timings and the
H100's throughput; no GPU run is recorded yet, so the first one states it. --quick on 2 CPU cores: 88 s
measured (2026-12-06), 70 s of it the workflow run.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import open_clip
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from snakemake.utils import update_config, validate

from bench_cam import cpu_model, make_inputs, preloaded_model
from bench_cam_precision import MODEL, agreement, gradcam_stage, pearson_r, refine_stages, sharpen_attention
from wsss.classes import load_class_lists
from wsss.clip.factory import load_clip, model_dtype
from wsss.clip.transform import image_stats
from wsss.datasets import read_manifest
from wsss.devices import SLOT_LOG_PREFIX
from wsss.h5store import get_image, image_ids, open_stage
from wsss.method_kinds import resolve_methods
from wsss.methods import clip_es
from wsss.methods.semples.cams import multiscale_cams, normalised_tensor
from wsss.methods.semples.data import load_rgb, multi_hot
from wsss.methods.semples.prompts import encode_with_prompts, init_prompts, prompt_tokens
from wsss.methods.semples.train import Critic, Schedule, head_step, load_critic, prompt_step
from wsss.methods.semples.weaktr import WeakTr, WeakTrConfig, phase1_loss, trainable_parameters
from wsss.segmenter.train import train_segmenter
from wsss.stages.pseudo_masks import recipe_threshold
from wsss.stages.segmenter import PseudoMaskDataset, run_prediction, segmenter_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
QK_SCALE = 5.0  # bench_cam_precision.py's conditioning of the random CLIP
N_CLASSES = 20  # bench_cam.make_inputs draws labels from 20 classes: VOC's
# The first autocast loss of each SemPLeS stage against the fp32 one (same weights, same batch: only the
# arithmetic differs) may differ by this many units of the format's rounding (torch.finfo(dtype).eps: 2^-10
# for fp16, 2^-7 for bf16) times max(1, |fp32 loss|). The losses are sums of -log(cosine) terms, each off by
# about one rounding of its cosine; bf16 on the CPU measured 0.6 to 1.2 units (quick mode, 2026-12-06).
LOSS_TOLERANCE_EPS = 8
# Part 4, the GPU run against the CPU run, both in fp32 (summation order only). Set before any GPU run was
# recorded: the JSON keeps each run's worst figures, so the first GPU run tells how much room there is.
COMPARE_TOLERANCES = {
    "float_r": 0.99,  # Pearson r of every float dataset of every stage file (CAMs, attention, confidences)
    "label_agreement": 0.99,  # pixel agreement of every label map (CRF labels, predictions, exported PNGs)
    "score_diff": 0.01,  # |difference| of every score in tables/summary.csv
}
SEGMENTER_LABELS = N_CLASSES + 1  # background and the 20 classes


@dataclass(frozen=True)
class Sizes:
    """How much each part does: the GPU run's sizes, or --quick's."""

    images: int
    height: int
    width: int
    cam_batches: tuple[int, ...]
    semples_steps: int
    semples_instance: Mapping[str, Any]  # a SemPLeS instance (kind plus what differs), resolved over DEFAULTS
    segmenter_config: Path  # the config whose segmenter section is trained, resolved over config.yaml
    segmenter_iterations: int


def sizes_for(quick: bool) -> Sizes:
    """The run's sizes: VOC-size images and the release / preset settings, or --quick's toy sizes."""
    if not quick:
        # the release's SemPLeS (DeiT-S mask generator, ViT-B/32 critic in fp16, release batch sizes)
        critic = {"model": "ViT-B-32-quickgelu", "pretrained": None, "precision": "fp16"}
        return Sizes(50, 375, 500, (1, 8, 16), 4, {"kind": "semples", "critic": critic},
                     REPO / "configs" / "voc.yaml", 10)
    tiny = yaml.safe_load(TINY.read_text())["methods"]["semples"]
    # the tiny test's SemPLeS, with a small open_clip critic (its own critic is the demo CLIP, trained in the DAG)
    critic = {"model": "ViT-S-32-alt", "pretrained": None, "precision": "fp16"}
    return Sizes(3, 120, 160, (1, 2), 1, {**tiny, "critic": critic}, TINY, 3)


# --------------------------------------------------------------------------------------------------
# Figures and checks


@dataclass
class Report:
    """Every figure (by part), every check, and the rows of the printed table."""

    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def row(self, part: str, item: str, text: str) -> None:
        """A table row of figures."""
        self.rows.append((part, item, text, ""))

    def check(self, part: str, name: str, passed: bool, detail: str = "") -> bool:
        """Record a check (and its table row); returns whether it passed."""
        self.checks.append({"part": part, "check": name, "passed": bool(passed), "detail": detail})
        self.rows.append((part, name, detail, "ok" if passed else "FAIL"))
        return bool(passed)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(c["passed"] for c in self.checks)

    def table(self) -> str:
        """The rows as one Markdown table."""
        header = ("part", "item", "figures", "check")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(4)]
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in self.rows]
        return "\n".join(lines)


class LogLines(logging.Handler):
    """Keeps the messages of the wsss loggers (the stages log the device they ran on)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the message."""
        self.messages.append(record.getMessage())


def spread(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """Min and median of a list (times scale), for the JSON."""
    return {"min": min(values) * scale, "median": statistics.median(values) * scale} if values else {}


def cuda_peak(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset, MiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def mib(value: float | None) -> str:
    """A peak-memory figure for the table."""
    return "n/a" if value is None else f"{value:.0f} MiB"


# --------------------------------------------------------------------------------------------------
# Part 1: the CLIP-ES CAM stage


def faithful_weights(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The CLIP that faithful runs with: on CUDA the same weights in fp16 as clip.precision fp16 loads them
    (OpenAI's convert_weights, LayerNorm fp32); on the CPU the fp32 model itself, as the official code."""
    if device.type != "cuda":
        return model
    half = load_clip(MODEL, None, precision="fp16", device=device)
    half.load_state_dict(model.state_dict())
    return half


def stage_file_problems(path: Path, rows: Mapping[str, tuple[int, int]], kind: str) -> list[str]:
    """What is wrong with a GradCAM/CAA ("cam") or CRF ("crf") shard file: missing images, shapes, non-finite values."""
    problems = []
    with open_stage(path) as handle:
        ids = image_ids(handle)
        if sorted(ids) != sorted(rows):
            problems.append(f"{path.name}: images {sorted(ids)} != {sorted(rows)}")
        for image_id in ids:
            stored = get_image(handle, image_id)
            if kind == "cam":
                cam, keys = stored["cam"], stored["keys"]
                if cam.ndim != 3 or cam.shape[0] != len(keys) or not np.isfinite(cam).all():
                    problems.append(f"{path.name}/{image_id}: cam {cam.shape} for {len(keys)} classes, "
                                    f"finite {bool(np.isfinite(cam).all())}")
            elif stored["labels"].shape != rows.get(image_id):
                problems.append(f"{path.name}/{image_id}: labels {stored['labels'].shape} != {rows.get(image_id)}")
    return problems


def logged_device(lines: LogLines, since: int) -> str | None:
    """The device of the last GradCAM stage's log line after message number ``since``."""
    found = None
    for message in lines.messages[since:]:
        match = re.match(r"GradCAM for shard \S+: \d+ images on (\w+)", message)
        found = match.group(1) if match else found
    return found


def cam_part(report: Report, folder: Path, manifest: Path, text: Path, sizes: Sizes, device: torch.device,
             lines: LogLines, workers: int) -> Path:
    """Part 1; returns the fp32 CRF file (part 3 trains on its pseudo masks)."""
    part = "1 CLIP-ES CAM"
    torch.manual_seed(0)  # the random weights, the same in every run
    model = load_clip(MODEL, None, precision="fp32", device=device)
    sharpen_attention(model, QK_SCALE)
    mean, std = image_stats(model)
    models = {"fp32": model, "faithful": faithful_weights(model, device), "fp16": model, "bf16": model}
    table = read_manifest(manifest)
    rows = {r.image_id: (int(r.height), int(r.width)) for r in table.itertuples()}
    threshold = recipe_threshold(clip_es.DEFAULTS["pseudo_masks"])
    n = sizes.images
    runs: dict[tuple[str, int], tuple[Path, ...]] = {}
    figures: dict[str, Any] = {"model": MODEL, "qk_scale": QK_SCALE, "images": n,
                               "image_size": [sizes.width, sizes.height], "crf_workers": workers,
                               "faithful_weights": str(model_dtype(models["faithful"])).replace("torch.", "")}
    report.figures[part] = figures
    if device.type == "cuda":
        report.check(part, "faithful runs OpenAI's fp16 weights", model_dtype(models["faithful"]) == torch.float16,
                     f"faithful CLIP weights {figures['faithful_weights']}")
    for mode, weights in models.items():
        if mode == "fp16" and device.type != "cuda":
            report.row(part, "fp16", "n/a: fp16 autocast is CUDA only (bf16 stands in on the CPU)")
            continue
        for batch in sizes.cam_batches:
            name = f"{mode} b{batch}"
            if batch > 1 and model_dtype(weights) != torch.float32:
                report.row(part, name, "n/a: the faithful fp16 weights run one image at a time (run_gradcam)")
                continue
            with preloaded_model(weights, mean, std):
                # untimed warm-up on one image: kernels, cuBLAS/cuDNN handles, allocator
                gradcam_stage(folder / "warmup", manifest, text, 1, mode, batch)
                reset_peak(device)
                before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
                since = len(lines.messages)
                start = time.perf_counter()
                gradcam, affinity = gradcam_stage(folder, manifest, text, n, mode, batch)
                seconds = time.perf_counter() - start
            peak = cuda_peak(device)
            ran_on = logged_device(lines, since)
            report.check(part, f"{name}: ran on {device.type}", ran_on == device.type, f"stage log: on {ran_on}")
            refined, crf = refine_stages(gradcam, affinity, manifest, n, workers)
            problems = [*stage_file_problems(gradcam, rows, "cam"), *stage_file_problems(refined, rows, "cam"),
                        *stage_file_problems(crf, rows, "crf")]
            report.check(part, f"{name}: outputs", not problems,
                         "; ".join(problems[:3]) or f"{n} images: finite CAMs (K, h, w), CRF labels (H, W)")
            runs[(mode, batch)] = (gradcam, refined, crf)
            figures[name] = {"seconds": seconds, "images_per_s": n / seconds, "peak_gpu_mib": peak,
                             "peak_gpu_mib_above_models": None if peak is None else peak - before}
    reference = runs[("fp32", 1)]
    for (mode, batch), (gradcam, refined, crf) in runs.items():
        name = f"{mode} b{batch}"
        entry = figures[name]
        if (mode, batch) != ("fp32", 1):
            initial_r, _ = agreement((reference[0], reference[2]), (gradcam, crf), threshold)
            refined_r, pixels = agreement((reference[1], reference[2]), (refined, crf), threshold)
            entry.update({"initial_r": spread(initial_r), "refined_r": spread(refined_r),
                          "mask_agreement_pct": spread(pixels, 100),
                          "images_mask_agreement_ge_99pct": sum(p >= 0.99 for p in pixels)})
            if mode == "fp32":
                report.check(part, f"{name} equals b1", min(initial_r) >= 0.999,
                             f"initial CAMs r min {min(initial_r):.6f} (>= 0.999: summation order only)")
        vs = "" if "refined_r" not in entry else (
            f"; vs fp32 b1: initial r min/med {entry['initial_r']['min']:.4f}/{entry['initial_r']['median']:.4f}, "
            f"refined r {entry['refined_r']['min']:.4f}/{entry['refined_r']['median']:.4f}, masks "
            f"{entry['mask_agreement_pct']['min']:.1f}/{entry['mask_agreement_pct']['median']:.1f} %")
        report.row(part, name, f"{entry['images_per_s']:.2f} img/s, peak {mib(entry['peak_gpu_mib'])}{vs}")
    return reference[2]


# --------------------------------------------------------------------------------------------------
# Part 2: SemPLeS. Every call into wsss.methods.semples' training and CAM API is in the next two functions,
# so that a change of its signatures is a change here only.

SEMPLES_STAGES = ("phase1", "match", "prompts", "refine")
Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]]


def semples_critic(method: Mapping[str, Any], names: Sequence[str], device: torch.device,
                   autocast: torch.dtype | None) -> Critic:
    """The frozen critic with random weights: the instance's precision (and fp16 similarities, as the training
    rules have them on CUDA) for the autocast run, fp32 for the reference; the same seed gives the same weights."""
    torch.manual_seed(int(method["seed"]))
    precision = method["critic"]["precision"] if autocast is not None else "fp32"
    critic = {**method["critic"], "pretrained": None, "precision": precision}
    similarity = torch.float16 if autocast == torch.float16 else None
    return load_critic(critic, [], names, method["text"]["template"], device, similarity)


def semples_call(stage: str, method: Mapping[str, Any], model: WeakTr, critic: Critic, prompts: torch.Tensor,
                 fp16: bool = False, image: Image.Image | None = None, keys: Sequence[int] = ()) -> Any:
    """One stage's loss step (phase1, match, prompts, refine), or the CAM step ("cams": maps of ``image``)."""
    if stage == "cams":
        return multiscale_cams(model, image, keys, method["cam"]["scales"], bool(method["cam"]["flip"]), fp16)
    if stage == "phase1":
        return lambda images, labels: (phase1_loss(model(images), labels), {})
    if stage == "match":
        return head_step(model, critic, float(method["match"]["mask_eps"]), float(method["match"]["lambda1"]))
    tokens, slots = prompt_tokens(critic.tokenizer, prompts.shape[1], critic.model.context_length)
    tokens = tokens.to(prompts.device)
    if stage == "prompts":
        section = method["prompts"]
        return prompt_step(model, critic, prompts, tokens, slots, float(section["mask_eps"]), float(section["lambda2"]))
    with torch.no_grad():  # stage c: the prompts are frozen, encoded once, as train_refine does
        background = encode_with_prompts(critic.model, prompts, tokens, slots, normalize=True).float()
    section = method["refine"]
    return head_step(model, critic, float(section["mask_eps"]), float(method["match"]["lambda1"]), background,
                     float(section["lambda3"]))


def align_text_tower(critics: Sequence[Critic], images: torch.Tensor) -> None:
    """Condition the random critics as part 1 conditions its CLIP: turn their text tower (projection and class
    features) by the reflection that takes the mean class feature onto the mean image feature of ``images``.

    Two random towers give image-text cosines around -0.1 to 0.1, mostly clamped at the losses' 1e-4, where
    there is no gradient; turned, they lie around 0.8, inside the clamps. The reflection is orthogonal, so
    cosines within each tower stay as they are. It is computed once (fp32) and applied to every critic.
    """
    reference = critics[0]
    with torch.no_grad():
        image_mean = F.normalize(reference.encode_images(images).mean(0), dim=0)
        text_mean = F.normalize(reference.text.mean(0), dim=0)
        w = text_mean - image_mean
        reflection = torch.eye(len(w), device=w.device) - 2 * torch.outer(w, w) / (w @ w)
        for critic in critics:
            projection = critic.model.text_projection
            projection.copy_((projection.float() @ reflection).to(projection.dtype))
            critic.text = critic.text @ reflection


def train_steps(step: Step, parameters: Sequence[torch.nn.Parameter], schedule: Schedule,
                batches: Sequence[tuple[torch.Tensor, torch.Tensor]], autocast: torch.dtype | None,
                device: torch.device, seed: int) -> tuple[list[float], int]:
    """AdamW steps as run_epochs takes them, under autocast (a GradScaler with fp16); (losses, steps taken)."""
    optimizer = torch.optim.AdamW(parameters, lr=schedule.lr, eps=1e-8, weight_decay=schedule.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)
    losses, taken = [], 0
    for index, (images, labels) in enumerate(batches):
        torch.manual_seed(seed + index)  # the same drop-path draws in both runs
        with torch.autocast(device.type, dtype=autocast) if autocast else nullcontext():
            loss, _ = step(images, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scale = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)
        scaler.update()
        # the scaler lowers its scale exactly when it skipped the step for non-finite gradients
        taken += scale is None or scaler.get_scale() >= scale
        losses.append(float(loss.detach()))
    return losses, taken


def training_images(manifest: Path, crop: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The part's images, ImageNet-normalised and resized to the crop size, and their multi-hot labels."""
    table = read_manifest(manifest)
    images = torch.cat([F.interpolate(normalised_tensor(load_rgb(p)), size=(crop, crop), mode="bilinear",
                                      align_corners=False) for p in table["image_path"]])
    labels = torch.stack([multi_hot(list(k), N_CLASSES) for k in table["labels"]])
    return images.to(device), labels.to(device)


def batches_of(images: torch.Tensor, labels: torch.Tensor, size: int,
               steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of ``size`` (the images cycled)."""
    index = [(torch.arange(size) + step * size) % len(images) for step in range(steps)]
    return [(images[i.to(images.device)], labels[i.to(images.device)]) for i in index]


def semples_part(report: Report, manifest: Path, sizes: Sizes, device: torch.device) -> None:
    """Part 2: each training stage in fp32 and under autocast from the same start, then the CAM step."""
    part = "2 SemPLeS"
    method = resolve_methods({"semples": sizes.semples_instance})["semples"]
    autocast = torch.float16 if device.type == "cuda" else torch.bfloat16
    names = list(load_class_lists()["voc_classes"])
    images, labels = training_images(manifest, int(method["augment"]["crop_size"]), device)
    critics = {dtype: semples_critic(method, names, device, dtype) for dtype in (None, autocast)}
    align_text_tower(list(critics.values()), images)
    geometry = {k: v for k, v in method["weaktr"].items() if k in WeakTrConfig.__dataclass_fields__}
    torch.manual_seed(int(method["seed"]))
    model = WeakTr(WeakTrConfig.from_dict({**geometry, "num_classes": N_CLASSES})).to(device)
    width = critics[None].model.token_embedding.weight.shape[1]
    generator = torch.Generator().manual_seed(int(method["seed"]))
    prompts = init_prompts(N_CLASSES, int(method["prompts"]["length"]), width, mode=method["prompts"]["init"],
                           generator=generator).to(device)
    figures: dict[str, Any] = {"critic": method["critic"]["model"], "autocast": str(autocast).replace("torch.", ""),
                               "grad_scaler": autocast == torch.float16, "steps": sizes.semples_steps,
                               "weaktr": geometry}
    report.figures[part] = figures
    phase1_model = None
    for stage in SEMPLES_STAGES:
        start = phase1_model if stage == "refine" else model  # stage c restarts from phase 1
        start_prompts = prompts
        batches = batches_of(images, labels, int(method[stage]["batch_size"]), sizes.semples_steps)
        results = {}
        for dtype in (None, autocast):
            net, learned = copy.deepcopy(start), torch.nn.Parameter(start_prompts.clone())
            net.detach_backbone = stage != "phase1"
            net.train(stage != "prompts")
            net.requires_grad_(stage != "prompts")
            step = semples_call(stage, method, net, critics[dtype], learned)
            parameters = [learned] if stage == "prompts" else trainable_parameters(net, stage)
            before = [p.detach().clone() for p in parameters]
            reset_peak(device)
            began = time.perf_counter()
            losses, taken = train_steps(step, parameters, Schedule.from_section(method[stage]), batches, dtype,
                                        device, int(method["seed"]))
            seconds = time.perf_counter() - began
            moved = any(not torch.equal(a, b.detach()) for a, b in zip(before, parameters))
            results[dtype] = {"losses": losses, "steps_taken": taken, "parameters_moved": moved,
                              "seconds": seconds, "peak_gpu_mib": cuda_peak(device)}
            if dtype is None:
                model, prompts = (net, prompts) if stage != "prompts" else (model, learned.detach())
                phase1_model = net if stage == "phase1" else phase1_model
        reference, reduced = results[None], results[autocast]
        difference = abs(reduced["losses"][0] - reference["losses"][0])
        figures[stage] = {"fp32": reference, "autocast": reduced, "first_loss_difference": difference,
                          "batch_size": int(method[stage]["batch_size"])}
        finite = all(math.isfinite(v) for r in results.values() for v in r["losses"])
        report.check(part, f"{stage}: finite losses", finite,
                     f"fp32 {' '.join(f'{v:.4f}' for v in reference['losses'])}; autocast "
                     f"{' '.join(f'{v:.4f}' for v in reduced['losses'])}")
        report.check(part, f"{stage}: autocast steps taken", reduced["steps_taken"] > 0 and reduced["parameters_moved"],
                     f"{reduced['steps_taken']}/{len(batches)} steps, parameters moved {reduced['parameters_moved']}")
        tolerance = LOSS_TOLERANCE_EPS * torch.finfo(autocast).eps * max(1.0, abs(reference["losses"][0]))
        report.check(part, f"{stage}: autocast loss = fp32", difference <= tolerance,
                     f"first step |difference| {difference:.2e} (<= {tolerance:.2e})")
        report.row(part, stage, f"batch {figures[stage]['batch_size']}: fp32 {reference['seconds']:.2f} s, "
                                f"autocast {reduced['seconds']:.2f} s, peak {mib(reduced['peak_gpu_mib'])}")
    model.eval()
    table = read_manifest(manifest)
    problems, pearson = [], []
    for row in table.itertuples():
        image, keys = load_rgb(row.image_path), list(row.labels)
        maps = semples_call("cams", method, model, critics[None], prompts, False, image, keys)
        if maps.shape != (len(keys), row.height, row.width) or not np.isfinite(maps).all() \
                or maps.min() < 0 or maps.max() > 1:
            problems.append(f"{row.image_id}: {maps.shape}, range [{maps.min():.3g}, {maps.max():.3g}]")
        if device.type == "cuda":  # the release's fp16 CAM forward; CPU autocast has no such mode
            half = semples_call("cams", method, model, critics[None], prompts, True, image, keys)
            pearson.append(min(pearson_r(a, b) for a, b in zip(maps, half)))
    figures["cams"] = {"images": len(table), "scales": method["cam"]["scales"], "flip": method["cam"]["flip"],
                       "fp16_vs_fp32_r": spread(pearson)}
    report.check(part, "CAM step outputs", not problems,
                 "; ".join(problems[:3]) or f"{len(table)} images: (K, H, W) maps in [0, 1]"
                 + (f"; fp16 vs fp32 r min {min(pearson):.4f}" if pearson else "; fp16 CAMs n/a on the CPU"))


# --------------------------------------------------------------------------------------------------
# Part 3: the segmenter


def resolved_config(path: Path) -> dict[str, Any]:
    """config.yaml updated by a config file as the Snakefile does (methods replaced), with the schema's defaults."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    own = yaml.safe_load(path.read_text())
    update_config(config, own)
    config["methods"] = own.get("methods", config["methods"])
    validate(config, str(REPO / "rules" / "schemas" / "config.schema.yaml"))
    return config


def segmenter_part(report: Report, folder: Path, manifest: Path, crf: Path, sizes: Sizes,
                   device: torch.device) -> None:
    """Part 3: training iterations on part 1's fp32 pseudo masks, then the prediction stage on the images."""
    part = "3 segmenter"
    config = resolved_config(sizes.segmenter_config)
    iterations = sizes.segmenter_iterations
    # no ImageNet weights offline: random init, so batch norm trains (as the demo's from-scratch segmenter)
    train = {**config["segmenter"]["train"], "init": "none", "init_path": None, "bn": "train",
             "iterations": iterations, "checkpoint_every": iterations, "log_every": 1}
    cfg = segmenter_config(train, SEGMENTER_LABELS, int(config["seed"]))
    dataset = PseudoMaskDataset(manifest, [crf], recipe_threshold(clip_es.DEFAULTS["pseudo_masks"]))
    stamps, losses = [], []

    def record(iteration: int, values: dict) -> None:
        """After each update: its time and loss."""
        stamps.append(time.perf_counter())
        losses.append(values["loss"])

    reset_peak(device)
    final = train_segmenter(dataset, cfg, folder / "segmenter", device=device, log=lambda line: None,
                            callback=record)
    train_peak = cuda_peak(device)
    # the first iteration pays for cuDNN's algorithm search and the data loader's start: rate from the rest
    rate = (len(stamps) - 1) * cfg.samples_per_iteration / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
    amp = bool(cfg.amp) and device.type == "cuda"
    predict = {**config["segmenter"]["predict"], "crf": {"enabled": False}}  # the CRF is CPU work: part 1 has it
    out = folder / "predictions.h5"
    reset_peak(device)
    start = time.perf_counter()
    run_prediction(final, manifest, "00000", sizes.images, predict, out)
    seconds = time.perf_counter() - start
    predict_peak = cuda_peak(device)
    rows = {r.image_id: (int(r.height), int(r.width)) for r in read_manifest(manifest).itertuples()}
    problems = stage_file_problems(out, rows, "crf")
    with open_stage(out) as handle:
        top = max(int(get_image(handle, i)["labels"].max()) for i in image_ids(handle))
    if top >= SEGMENTER_LABELS:
        problems.append(f"label {top} >= {SEGMENTER_LABELS}")
    report.figures[part] = {"config": str(sizes.segmenter_config.relative_to(REPO)), "backbone": cfg.backbone,
                            "crop": cfg.crop, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                            "msc_scales": list(cfg.msc_scales), "amp": amp, "iterations": iterations,
                            "losses": losses, "train_images_per_s": rate, "train_peak_gpu_mib": train_peak,
                            "predict_images_per_s": sizes.images / seconds, "predict_peak_gpu_mib": predict_peak,
                            "predict": predict}
    report.check(part, "training losses finite", len(losses) == iterations and all(map(math.isfinite, losses)),
                 f"{len(losses)} iterations, losses {' '.join(f'{v:.3f}' for v in losses)}")
    report.check(part, "prediction outputs", not problems,
                 "; ".join(problems[:3]) or f"{sizes.images} images, labels (H, W) < {SEGMENTER_LABELS}")
    if device.type == "cuda":
        report.check(part, "ran on cuda", train_peak > 0 and predict_peak > 0,
                     f"peak GPU memory: training {train_peak:.0f} MiB, prediction {predict_peak:.0f} MiB")
    report.row(part, f"{cfg.backbone}, crop {cfg.crop}, amp {amp}",
               f"training {'n/a' if rate is None else f'{rate:.2f}'} img/s (peak {mib(train_peak)}), prediction "
               f"{sizes.images / seconds:.2f} img/s (peak {mib(predict_peak)})")


# --------------------------------------------------------------------------------------------------
# Part 4: the tiny workflow on the GPU and on the CPU


def workflow_config(path: Path) -> Path:
    """tests/configs/tiny.yaml with one shard per split, without its bf16 ablation, fp32 on every device."""
    config = yaml.safe_load(TINY.read_text())
    del config["methods"]["clip_es_logit"]  # bf16 autocast GradCAM: part 1 runs it
    config["shard_size"] = max(config["demo_world"]["n_train"], config["demo_world"]["n_val"])
    config["methods"]["semples"]["precision"] = "fp32"
    config["segmenter"]["train"]["amp"] = False
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_workflows(folder: Path, config: Path, runs: Sequence[str], cores: int) -> dict[str, dict[str, Any]]:
    """The workflow once per run ("gpu", "cpu") side by side, each in its own directory; rc, seconds, stdout."""
    started = {}
    for run in runs:
        env = {**os.environ, "NVIDIA_TF32_OVERRIDE": "0"}  # cuBLAS and cuDNN in true fp32, as the CPU
        if run == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # no device: the slot pool hands out nothing, torch sees no CUDA
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                   str(folder / run), "--configfile", str(config), "--workflow-profile",
                   str(REPO / "profiles" / "workstation"), "--cores", str(cores)]
        (folder / run).mkdir(parents=True)
        output = open(folder / f"{run}.out", "w")
        started[run] = (subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO),
                        output, time.perf_counter())
    results = {}
    for run, (process, output, began) in started.items():
        rc = process.wait()
        output.close()
        results[run] = {"rc": rc, "seconds": time.perf_counter() - began,
                        "stdout": (folder / f"{run}.out").read_text()}
    return results


def gpu_job_logs(stdout: str, workdir: Path) -> dict[str, Path]:
    """Rule name + log path of every job Snakemake ran with the gpu resource (from its job listing)."""
    jobs, rule, log = {}, None, None
    for line in stdout.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if match:
            rule, log = match.group(1), None
        elif line.strip().startswith("log: ") and rule:
            log = line.strip()[len("log: "):].split(" ")[0].rstrip(",")
        elif line.strip().startswith("resources: ") and rule and log and re.search(r"\bgpu=[1-9]", line):
            jobs[f"{rule} {log}"] = workdir / log
    return jobs


def slot_lines(logs: Mapping[str, Path]) -> dict[str, tuple[str | None, str] | None]:
    """Per GPU job: (the slot's CUDA_VISIBLE_DEVICES, what torch saw) from its log line, or None without one."""
    pattern = re.compile(re.escape(SLOT_LOG_PREFIX) + r" CUDA_VISIBLE_DEVICES=(\S*); torch sees (.*)$")
    found: dict[str, tuple[str | None, str] | None] = {}
    for job, path in logs.items():
        found[job] = None
        for line in path.read_text().splitlines() if path.exists() else []:
            match = pattern.search(line)
            if match:
                found[job] = (None if match.group(1) == "unset" else match.group(1), match.group(2))
    return found


def nvidia_uuids() -> dict[str, str]:
    """Physical GPU index -> UUID (hex digits only) from nvidia-smi; empty without it."""
    text = command_output(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"])
    pairs = (line.split(",", 1) for line in text.splitlines() if "," in line)
    return {index.strip(): hex_uuid(uuid) for index, uuid in pairs}


def hex_uuid(text: str) -> str:
    """A GPU UUID as bare lower-case hex digits (nvidia-smi writes 'GPU-…', torch the bare 8-4-4-4-12 form)."""
    return re.sub(r"[^0-9a-f]", "", text.strip().lower().removeprefix("gpu-"))


def device_problems(seen: Mapping[str, tuple[str | None, str] | None], on_gpu: bool,
                    uuids: Mapping[str, str]) -> list[str]:
    """GPU jobs whose log line is missing or names another device than the slot gave (none on a CPU run)."""
    problems = []
    for job, line in seen.items():
        if line is None:
            problems.append(f"{job}: no '{SLOT_LOG_PREFIX}' line")
            continue
        slot, torch_saw = line
        if not on_gpu:
            if torch_saw != "no CUDA device":
                problems.append(f"{job}: CPU run, but torch saw {torch_saw}")
            continue
        devices = re.findall(r"uuid=(\S+)", torch_saw)
        # a slot names physical indices (nvidia-smi's), or UUIDs where a scheduler set them
        expected = [hex_uuid(d) if d.lower().startswith("gpu-") else uuids.get(d) for d in (slot or "").split(",") if d]
        if not expected or [hex_uuid(d) for d in devices] != expected:
            problems.append(f"{job}: slot {slot!r} (uuid {expected}), torch saw {torch_saw}")
    return problems


def compare_arrays(name: str, a: np.ndarray, b: np.ndarray, worst: dict[str, float], failures: list[str]) -> None:
    """One dataset or mask of the reference run against the other's, by COMPARE_TOLERANCES."""
    if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
        failures.append(f"{name}: {a.dtype}{a.shape} != {b.dtype}{b.shape}")
    elif a.dtype.kind == "f":
        r = pearson_r(a.astype(np.float64), b.astype(np.float64)) if a.size > 1 else float(np.isclose(a, b).all())
        worst["float_r"] = min(worst["float_r"], r)
        if not r >= COMPARE_TOLERANCES["float_r"]:
            failures.append(f"{name}: r {r:.6f}")
    elif a.dtype.kind in "iub" and a.ndim >= 2:
        share = float((a == b).mean())
        worst["label_agreement"] = min(worst["label_agreement"], share)
        if share < COMPARE_TOLERANCES["label_agreement"]:
            failures.append(f"{name}: {share * 100:.2f} % of pixels agree")
    elif not np.array_equal(a, b):  # class keys, ids, anything else: exactly
        failures.append(f"{name}: differs")


def compare_runs(reference: Path, other: Path) -> dict[str, Any]:
    """A workflow's results folder against another run's: what differs beyond COMPARE_TOLERANCES, worst figures.

    Exact: the demo world and the manifests (CPU rules), keys and other non-float, non-map data. Within the
    tolerances: every dataset of every HDF5 stage file, every exported PNG mask, every score of
    tables/summary.csv. Not compared: logs, timings, model files (their outputs are), the run manifest.
    """
    worst = {"float_r": 1.0, "label_agreement": 1.0, "score_diff": 0.0}
    failures: list[str] = []
    compared = 0
    for path in sorted(p for p in reference.rglob("*") if p.is_file()):
        relative = path.relative_to(reference)
        twin = other / relative
        exact = relative.parts[0] in ("demo_world", "manifests")
        if not (exact or path.suffix in (".h5", ".png") or relative.as_posix() == "tables/summary.csv") \
                or (path.suffix == ".png" and "figures" in relative.parts):
            continue
        compared += 1
        if not twin.is_file():
            failures.append(f"{relative}: missing")
        elif exact:
            if path.read_bytes() != twin.read_bytes():
                failures.append(f"{relative}: bytes differ")
        elif path.suffix == ".h5":
            with h5py.File(path, "r") as a, h5py.File(twin, "r") as b:
                names: list[str] = []
                a.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
                for name in names:
                    if name not in b:
                        failures.append(f"{relative}/{name}: missing")
                    else:
                        compare_arrays(f"{relative}/{name}", a[name][()], b[name][()], worst, failures)
        elif path.suffix == ".png":
            with Image.open(path) as a, Image.open(twin) as b:
                compare_arrays(str(relative), np.asarray(a), np.asarray(b), worst, failures)
        else:
            a, b = pd.read_csv(path), pd.read_csv(twin)
            keys = [c for c in a.columns if c != "value"]
            if not a[keys].equals(b[keys]):
                failures.append(f"{relative}: other rows")
                continue
            differences = (a["value"] - b["value"]).abs()
            worst["score_diff"] = max(worst["score_diff"], float(differences.max()))
            for row, difference in zip(a.itertuples(), differences):
                if not difference <= COMPARE_TOLERANCES["score_diff"]:
                    failures.append(f"{relative} {row.method}/{row.stage}/{row.split}/{row.metric}: "
                                    f"|diff| {difference:.4f}")
    return {"files_compared": compared, "worst": worst, "failures": failures}


def workflow_part(report: Report, folder: Path, device: torch.device) -> None:
    """Part 4: the workflow on the GPU and the CPU side by side (the CPU only, on a CPU machine)."""
    part = "4 workflow"
    folder.mkdir(parents=True)
    config = workflow_config(folder / "config.yaml")
    runs = ("gpu", "cpu") if device.type == "cuda" else ("cpu",)
    cores = max(1, (os.cpu_count() or 2) // len(runs))
    results = run_workflows(folder, config, runs, cores)
    uuids = nvidia_uuids()
    figures: dict[str, Any] = {"config": "tests/configs/tiny.yaml, one shard per split, without clip_es_logit, "
                                         "segmenter amp off, SemPLeS precision fp32",
                               "profile": "profiles/workstation", "cores_per_run": cores,
                               "tolerances": COMPARE_TOLERANCES}
    report.figures[part] = figures
    for run, result in results.items():
        results_dir = folder / run / "results" / "tiny"
        done = result["rc"] == 0 and (results_dir / "tables" / "summary.csv").is_file()
        report.check(part, f"{run} run finished", done,
                     f"rc {result['rc']} in {result['seconds']:.0f} s" + ("" if done else ": "
                     + " | ".join(result["stdout"].strip().splitlines()[-3:])))
        seen = slot_lines(gpu_job_logs(result["stdout"], folder / run))
        problems = device_problems(seen, run == "gpu", uuids)
        figures[run] = {"rc": result["rc"], "seconds": result["seconds"], "gpu_jobs": len(seen),
                        "slot_lines": {job: list(line) if line else None for job, line in seen.items()}}
        report.check(part, f"{run} run: GPU jobs' devices", bool(seen) and not problems,
                     "; ".join(problems[:3]) or f"{len(seen)} GPU jobs, each on "
                     + ("the device its slot gave" if run == "gpu" else "the CPU (no device given)"))
    if len(runs) == 2:
        comparison = compare_runs(folder / "cpu" / "results" / "tiny", folder / "gpu" / "results" / "tiny")
        figures["gpu_vs_cpu"] = comparison
        worst = comparison["worst"]
        report.check(part, "GPU outputs = CPU outputs", not comparison["failures"] and comparison["files_compared"] > 0,
                     "; ".join(comparison["failures"][:3]) or f"{comparison['files_compared']} files; worst r "
                     f"{worst['float_r']:.6f}, label agreement {worst['label_agreement'] * 100:.3f} %, score "
                     f"|diff| {worst['score_diff']:.4f}")
    else:
        report.row(part, "GPU outputs = CPU outputs", "n/a: no GPU (one CPU run)")


# --------------------------------------------------------------------------------------------------
# The run


def command_output(command: Sequence[str]) -> str:
    """A command's stdout, or '' when it is missing or fails."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and devices: Python, torch, CUDA, cuDNN, open_clip, the GPU, nvidia-smi's report."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "open_clip": open_clip.__version__, "torch_threads": torch.get_num_threads(),
        "nvidia_smi": command_output(["nvidia-smi"]) or "not found",
        "nvidia_smi_gpus": command_output(["nvidia-smi", "--query-gpu=index,name,uuid,driver_version,memory.total",
                                           "--format=csv,noheader"]).strip(),
    }
    if device.type == "cuda":
        tf32 = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        info.update({"gpu": torch.cuda.get_device_name(device), "capability": torch.cuda.get_device_capability(device),
                     "cudnn": torch.backends.cudnn.version(), "tf32": tf32})
    return info


@contextmanager
def captured_logs() -> Iterator[LogLines]:
    """The wsss loggers' INFO messages, kept (not printed) for the device checks."""
    lines, logger = LogLines(), logging.getLogger("wsss")
    previous = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(previous)


def run_part(report: Report, part: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one part; an exception fails it (with its traceback in the JSON) and the run goes on."""
    start = time.perf_counter()
    try:
        return fn(report, *args)
    except Exception as exc:  # one broken path must not hide what the others measure
        report.check(part, "ran", False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        report.figures.setdefault("tracebacks", {})[part] = traceback.format_exc()
        return None
    finally:
        report.figures.setdefault("seconds", {})[part] = time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run every part, print the table, write the JSON; exit status 1 when a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_acceptance.json and the work files")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="toy sizes (3 small images, 2-3 steps): the CPU check")
    parser.add_argument("--images", type=int, default=None, help="images of parts 1 and 3 (default 50, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before CUDA starts: the stages' default device is then the CPU
    if torch.cuda.is_available() != (args.device == "cuda"):
        parser.error(f"--device {args.device}, but torch {'sees' if torch.cuda.is_available() else 'has'} no CUDA "
                     f"device{'' if torch.cuda.is_available() else ' (use --device cpu)'}")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = sizes_for(args.quick)
    if args.images:
        sizes = replace(sizes, images=args.images)
    for name in ("work", "workflow"):
        shutil.rmtree(args.out / name, ignore_errors=True)
    work = args.out / "work"
    (work / "warmup").mkdir(parents=True)
    report = Report()
    began = time.perf_counter()
    workers = max(1, min(8, (os.cpu_count() or 1) // 2))
    with captured_logs() as lines:
        embed_dim = int(open_clip.get_model_config(MODEL)["embed_dim"])
        manifest, text = make_inputs(work, sizes.images, sizes.height, sizes.width, 2, N_CLASSES, 25, embed_dim, 0)
        crf = run_part(report, "1 CLIP-ES CAM", cam_part, work, manifest, text, sizes, device, lines, workers)
        run_part(report, "2 SemPLeS", semples_part, manifest, sizes, device)
        if crf is not None:
            run_part(report, "3 segmenter", segmenter_part, work, manifest, crf, sizes, device)
        else:
            report.check("3 segmenter", "ran", False, "needs part 1's pseudo masks")
        run_part(report, "4 workflow", workflow_part, args.out / "workflow", device)
    total = time.perf_counter() - began
    machine = environment(device)
    report.row("all", "wall time", f"{total:.0f} s on {machine.get('gpu', machine['cpu'])}")
    result = {"passed": report.passed, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "device": args.device,
              "quick": args.quick, "seconds": total, "sizes": {k: str(v) for k, v in sizes.__dict__.items()},
              "environment": machine, "checks": report.checks, "figures": report.figures,
              "table": report.rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_acceptance.json").write_text(json.dumps(result, indent=1, default=str))
    print(report.table())
    failed = [c for c in report.checks if not c["passed"]]
    print(f"\n{len(report.checks) - len(failed)}/{len(report.checks)} checks passed; figures in "
          f"{args.out / 'gpu_acceptance.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
