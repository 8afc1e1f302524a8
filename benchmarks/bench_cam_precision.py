"""The CAM stage's precision modes on CPU: speed against a bare fp32 forward, and agreement with the faithful path.

ViT-B/16 with QuickGELU (OpenAI's geometry) and random weights whose image blocks' q and k projections are
scaled by --qk-scale (plain random init gives near-uniform attention and numerically degenerate maps),
synthetic VOC-size JPEGs (500x375 -> 768 patch tokens), K classes per image, M background words.

  Speed: per image, three timings back to back in one process (order rotating): (a) bare fp32
  ``encode_image`` (no maps, no gradients), (b) the CAM rule ``run_gradcam`` in the faithful mode, (c) the
  CAM rule in the bf16 mode; medians of the per-image ratios (b)/(a) and (c)/(a).
  Agreement: the whole shard through the real stages in each mode, GradCAM -> CAA -> dense CRF; per image
  the lowest Pearson r over its classes of the refined CAMs, and the pixel agreement of the pseudo masks
  (CRF labels with the 0.95 confidence ignore rule), bf16 against faithful, and as a yardstick of how much
  the method amplifies rounding, plain fp32 (no fp16 position table) against faithful.

    nice .venv/bin/python benchmarks/bench_cam_precision.py --images 20 --timing-images 6 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_cam import bare_forward, cpu_model, interpolated_positions, make_inputs, preloaded_model, timed
from wsss.clip.factory import load_clip, patch_size
from wsss.clip.transform import image_stats, preprocess_image
from wsss.crf import training_labels
from wsss.h5store import get_image, image_ids, open_stage
from wsss.methods import clip_es
from wsss.methods.clip_es.caa import run_caa
from wsss.methods.clip_es.gradcam import run_gradcam
from wsss.stages.pseudo_masks import recipe_threshold, run_crf

MODEL = "ViT-B-16-quickgelu"


def sharpen_attention(model, scale: float) -> None:
    """Scale the q and k projections (weights and biases) of every image block by ``scale``."""
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            width = block.attn.embed_dim
            block.attn.in_proj_weight[: 2 * width] *= scale
            block.attn.in_proj_bias[: 2 * width] *= scale


def gradcam_stage(folder: Path, manifest: Path, text: Path, n: int, precision: str,
                  batch_size: int = 1) -> tuple[Path, Path]:
    """GradCAM on the n-image shard in one precision mode and batch size; (initial CAM file, affinity file)."""
    cam = {**clip_es.DEFAULTS["cam"], "precision": precision, "batch_size": batch_size}
    clip = {"model": MODEL, "pretrained": None, "precision": "fp32"}
    tag = precision if batch_size == 1 else f"{precision}_b{batch_size}"
    gradcam, affinity = folder / f"gradcam_{tag}.h5", folder / f"affinity_{tag}.h5"
    run_gradcam(manifest, "00000", n, text, clip, [], cam, gradcam, affinity)
    return gradcam, affinity


def refine_stages(gradcam: Path, affinity: Path, manifest: Path, n: int, workers: int) -> tuple[Path, Path]:
    """CAA -> CRF on a GradCAM shard of gradcam_stage, files beside it; (refined CAM file, CRF file)."""
    method = clip_es.DEFAULTS
    tag = gradcam.stem.removeprefix("gradcam_")
    refined, crf = gradcam.with_name(f"cams_{tag}.h5"), gradcam.with_name(f"crf_{tag}.h5")
    run_caa(gradcam, affinity, method["caa"], refined)
    run_crf(refined, manifest, "00000", n, method["pseudo_masks"]["crf"], crf, workers=workers)
    return refined, crf


def stages(folder: Path, manifest: Path, text: Path, n: int, precision: str, workers: int) -> tuple[Path, Path]:
    """GradCAM -> CAA -> CRF on the n-image shard in one precision mode; (refined CAM file, CRF file)."""
    return refine_stages(*gradcam_stage(folder, manifest, text, n, precision), manifest, n, workers)


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two maps; a constant map (an empty CAA box) counts 1 if both are equal, else 0."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float(np.array_equal(x, y))
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


def agreement(faithful: tuple[Path, Path], other: tuple[Path, Path], threshold: float) -> tuple[list, list]:
    """Per image: (lowest per-class Pearson r of the refined CAMs, pseudo-mask pixel agreement)."""
    pearson, pixels = [], []
    with open_stage(faithful[0]) as a, open_stage(other[0]) as b:
        for image_id in image_ids(a):
            cam_a, cam_b = get_image(a, image_id)["cam"], get_image(b, image_id)["cam"]
            pearson.append(min(pearson_r(x, y) for x, y in zip(cam_a, cam_b)))
    with open_stage(faithful[1]) as a, open_stage(other[1]) as b:
        for image_id in image_ids(a):
            masks = [training_labels(h["labels"], h["confidence"], threshold)
                     for h in (get_image(a, image_id), get_image(b, image_id))]
            pixels.append(float((masks[0] == masks[1]).mean()))
    return pearson, pixels


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="images of the agreement shard")
    parser.add_argument("--timing-images", type=int, default=6, help="of those, timed one by one")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=2, help="K, present classes per image")
    parser.add_argument("--background", type=int, default=25, help="M, background words")
    parser.add_argument("--qk-scale", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_clip(MODEL, None, precision="fp32", device="cpu")
    sharpen_attention(model, args.qk_scale)
    mean, std = image_stats(model)
    p = patch_size(model)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        folder = Path(tmp)
        manifest, text = make_inputs(folder, args.images, args.height, args.width, args.classes, 20,
                                     args.background, int(model.text_projection.shape[1]), args.seed)
        tensors = []
        for path in sorted(folder.glob("bench_*.jpg"))[: args.timing_images]:
            with Image.open(path) as image:
                tensors.append(preprocess_image(image, p, mean, std))
        grid = (tensors[0].shape[-2] // p, tensors[0].shape[-1] // p)

        def cam_rule(i: int, precision: str) -> None:
            cam = {**clip_es.DEFAULTS["cam"], "precision": precision}
            clip = {"model": MODEL, "pretrained": None, "precision": "fp32"}
            run_gradcam(manifest, f"{i:05d}", 1, text, clip, [], cam, folder / f"t_{precision}_{i}.h5",
                        folder / f"ta_{precision}_{i}.h5")

        with preloaded_model(model, mean, std):
            for precision in ("faithful", "bf16"):  # warm-up: allocator, oneDNN kernels of both dtypes
                cam_rule(0, precision)
            with interpolated_positions(model, grid):
                bare_forward(model, tensors[:1])
            times: dict[str, list[float]] = {"bare": [], "faithful": [], "bf16": []}
            order = ["bare", "faithful", "bf16"]
            for i, tensor in enumerate(tensors):
                for what in order[i % 3:] + order[: i % 3]:
                    if what == "bare":
                        with interpolated_positions(model, grid):
                            times[what].append(timed(bare_forward, model, [tensor])[0])
                    else:
                        times[what].append(timed(cam_rule, i, what)[0])
            runs = {precision: stages(folder, manifest, text, args.images, precision, args.threads)
                    for precision in ("faithful", "fp32", "bf16")}
        threshold = recipe_threshold(clip_es.DEFAULTS["pseudo_masks"])
        compared = {other: agreement(runs["faithful"], runs[other], threshold) for other in ("bf16", "fp32")}
    load_after = os.getloadavg()

    med = statistics.median
    ratio = {what: [t / b for t, b in zip(times[what], times["bare"])] for what in ("faithful", "bf16")}
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; load average {load_before[0]:.2f} before / {load_after[0]:.2f} after")
    print(f"setup: {MODEL}, q/k x{args.qk_scale:g}, {args.width}x{args.height} -> {grid[0] * grid[1]} tokens, "
          f"K={args.classes}, M={args.background}; {len(tensors)} images timed, {args.images} compared")
    print(f"(a) bare fp32 encode_image : {med(times['bare']) * 1e3:8.1f} ms/image (median)")
    for what, label in (("faithful", "(b) CAM rule, faithful"), ("bf16", "(c) CAM rule, bf16    ")):
        print(f"{label}     : {med(times[what]) * 1e3:8.1f} ms/image; per image /(a): "
              f"{' '.join(f'{r:.3f}' for r in ratio[what])} -> median {med(ratio[what]):.3f}")
    print(f"(c)/(b) median of per-image ratios: {med([c / b for b, c in zip(times['faithful'], times['bf16'])]):.3f}")
    for other, (pearson, pixels) in compared.items():
        print(f"{other} vs faithful: refined CAMs, lowest per-class Pearson r per image: min {min(pearson):.5f}, "
              f"median {med(pearson):.5f}, {sum(r >= 0.99 for r in pearson)}/{len(pearson)} images >= 0.99; "
              f"pseudo masks (ignore below {threshold}), pixel agreement: min {min(pixels) * 100:.3f} %, "
              f"median {med(pixels) * 100:.3f} %, {sum(a >= 0.99 for a in pixels)}/{len(pixels)} images >= 99 %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
