"""Benchmark of the CAM stage (CLIP-ES stage 1) against a bare CLIP image-encoder forward, on CPU.

ViT-B/16 geometry with random weights (no download), VOC-sized images (500x375 -> 512x384 -> 32x24 =
768 patch tokens), K foreground classes and M background words per image. For every image of every
repeat, a pair of timings is taken back to back (their order alternating), so that load from other
processes hits both alike, and the per-pair ratios are reported:

  (a) bare forward: ``model.encode_image`` under ``torch.no_grad`` on the image's preprocessed tensor,
      with the position embeddings interpolated to the image grid (swapped into the model for the call;
      open_clip's own path then runs its fused attention, no attention maps, no gradients);
  (b) the CAM rule: ``wsss.methods.clip_es.gradcam.run_gradcam`` on a one-image shard of a generated manifest of JPEG
      images (stage files, decode, preprocessing, softmax-GradCAM, layer-mean attention, gzip HDF5
      writes of the CAMs and of the attention), with the model loader patched to hand back the
      already loaded model.

Then one more pair at shard granularity (all N images; one N-image run_gradcam call), ``run_caa`` on the
N-image shard, and the bytes kept per image (initial CAM file + refined CAA file, gzip as the store
writes it). Same process, same torch threads for (a) and (b).

    nice .venv/bin/python benchmarks/bench_cam.py                      # defaults: 4 images, 3 repeats, K=2, M=25
    nice .venv/bin/python benchmarks/bench_cam.py --images 4 --repeats 5 --threads 2 --check
    .venv/bin/python benchmarks/bench_cam.py --device cuda --precision fp16 --batch-size 16 --images 64 --repeats 1

With --device cuda it also prints the shard's images/s and the peak GPU memory (the GPU path: images of one
size batched, decode on a worker thread).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

import wsss.methods.clip_es.gradcam as gradcam_step
from wsss.methods import clip_es
from wsss.methods.clip_es.caa import run_caa
from wsss.methods.clip_es.gradcam import run_gradcam
from wsss.clip.factory import load_clip, patch_size
from wsss.clip.transform import image_stats, preprocess_image
from wsss.clip.transformer import interpolate_pos_embed
from wsss.datasets import MANIFEST_COLUMNS, write_manifest
from wsss.methods.clip_es.softmax_gradcam import softmax_gradcam
from wsss.h5store import image_ids, put_image, write_stage


def synthetic_photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A photograph-like RGB image: smooth gradient background, a few coloured ellipses, mild noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = (
        rng.uniform(40, 200, 3).astype(np.float32)
        + yy[..., None] * rng.uniform(-0.15, 0.15, 3).astype(np.float32)
        + xx[..., None] * rng.uniform(-0.15, 0.15, 3).astype(np.float32)
    )
    for _ in range(int(rng.integers(3, 6))):
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(0.08, 0.3) * height, rng.uniform(0.08, 0.3) * width
        image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_inputs(
    folder: Path, n: int, height: int, width: int, k: int, n_classes: int, m: int, embed_dim: int, seed: int
) -> tuple[Path, Path]:
    """Write n JPEGs, their manifest (K distinct labels each) and a text-feature file; return both paths."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = folder / f"bench_{i:04d}.jpg"
        synthetic_photo(rng, height, width).save(path, quality=90)
        labels = " ".join(str(c) for c in sorted(rng.choice(n_classes, size=k, replace=False)))
        rows.append([path.stem, str(path), height, width, labels, "", ""])
    manifest = folder / "manifest.tsv"
    write_manifest(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), manifest)
    text = folder / "text.h5"
    g = torch.Generator().manual_seed(seed)
    with write_stage(text, "text_features", {"bench": True}) as out:
        out.create_dataset(
            "foreground", data=F.normalize(torch.randn(n_classes, embed_dim, generator=g), dim=-1).numpy()
        )
        out.create_dataset("background", data=F.normalize(torch.randn(m, embed_dim, generator=g), dim=-1).numpy())
    return manifest, text


@contextmanager
def interpolated_positions(model, grid_hw: tuple[int, int]):
    """Temporarily give the image tower position embeddings for the grid, so encode_image runs at that size."""
    visual = model.visual
    original = visual.positional_embedding
    visual.positional_embedding = torch.nn.Parameter(
        interpolate_pos_embed(original.detach(), grid_hw), requires_grad=False
    )
    try:
        yield model
    finally:
        visual.positional_embedding = original


@contextmanager
def preloaded_model(model, mean, std):
    """Make run_gradcam use the loaded model instead of building (and timing) a fresh one."""
    original = gradcam_step.load_configured_clip
    gradcam_step.load_configured_clip = lambda clip, checkpoint, device: (model, None, mean, std)
    try:
        yield
    finally:
        gradcam_step.load_configured_clip = original


def bare_forward(model, tensors: list[torch.Tensor]) -> None:
    """The baseline: one plain encode_image per image, no attention maps, no gradients."""
    device = model.visual.conv1.weight.device
    with torch.no_grad():
        for x in tensors:
            model.encode_image(x[None].to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cam_rule(
    manifest: Path, text: Path, shard: str, shard_size: int, cams_path: Path, affinity_path: Path, cam_cfg: dict
) -> None:
    """The stage runner on one shard of the manifest (shard_size images)."""
    clip = {"model": "ViT-B-16-quickgelu", "pretrained": None, "precision": "fp32"}
    cam = {**clip_es.DEFAULTS["cam"], **cam_cfg}
    run_gradcam(manifest, shard, shard_size, text, clip, [], cam, cams_path, affinity_path)


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def max_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stored_bytes(path: Path) -> tuple[float, float]:
    """(mean bytes of the stored datasets per image group, file size per image) of a stage file."""
    with h5py.File(path, "r") as handle:
        ids = image_ids(handle)
        data = [sum(handle[i][name].id.get_storage_size() for name in handle[i]) for i in ids]
    return float(np.mean(data)), os.path.getsize(path) / len(ids)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=2, help="K, present foreground classes per image")
    parser.add_argument("--background", type=int, default=25, help="M, background words")
    parser.add_argument("--images", type=int, default=4, help="generated images (one manifest)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images, one (a)/(b) pair per image")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--attn-layers", type=int, default=-8, help="first block of the attention layer mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="faithful", help="cam.precision: faithful, fp32, bf16 or fp16")
    parser.add_argument("--batch-size", type=int, default=1, help="cam.batch_size (images of one size together)")
    parser.add_argument(
        "--check", action="store_true", help="also compare the fast and the reference arithmetic on one image"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = os.getloadavg()
    rss_start = max_rss_mib()
    model = load_clip("ViT-B-16-quickgelu", None, precision="fp32", device=args.device)
    rss_model = max_rss_mib()
    mean, std = image_stats(model)
    p = patch_size(model)
    cam_cfg = {"score": "softmax", "use_background": True, "attn_layers": [args.attn_layers, None],
               "precision": args.precision, "batch_size": args.batch_size}

    with tempfile.TemporaryDirectory(prefix="bench_cam_") as tmp:
        folder = Path(tmp)
        manifest, text = make_inputs(
            folder,
            args.images,
            args.height,
            args.width,
            args.classes,
            20,
            args.background,
            int(model.text_projection.shape[1]),
            args.seed,
        )
        tensors = []
        for path in sorted(folder.glob("bench_*.jpg")):
            with Image.open(path) as image:
                tensors.append(preprocess_image(image, p, mean, std))
        grid = (tensors[0].shape[-2] // p, tensors[0].shape[-1] // p)
        paths = (folder / "cams.h5", folder / "affinity.h5")

        with interpolated_positions(model, grid):  # warm-up (allocator, oneDNN kernels), untimed
            bare_forward(model, tensors[:1])
        rss_bare = max_rss_mib()
        with preloaded_model(model, mean, std):
            cam_rule(manifest, text, "00000", args.images, *paths, cam_cfg)
        rss_cam = max_rss_mib()

        # Paired, interleaved timings: image i through (a), then the same image as a one-image shard
        # through (b) (order swapped every other pair), so that load from other processes hits both alike.
        bare_w, bare_c, cam_w, cam_c = [], [], [], []
        for r in range(args.repeats):
            for i, tensor in enumerate(tensors):
                shard_paths = (folder / f"cams_{i:05d}.h5", folder / f"affinity_{i:05d}.h5")
                pair = {}
                for what in (("bare", "cam") if (r + i) % 2 == 0 else ("cam", "bare")):
                    if what == "bare":
                        with interpolated_positions(model, grid):
                            pair[what] = timed(bare_forward, model, [tensor])
                    else:
                        with preloaded_model(model, mean, std):
                            pair[what] = timed(cam_rule, manifest, text, f"{i:05d}", 1, *shard_paths, cam_cfg)
                bare_w.append(pair["bare"][0])
                bare_c.append(pair["bare"][1])
                cam_w.append(pair["cam"][0])
                cam_c.append(pair["cam"][1])

        # One more pair at shard granularity: all N images through (a), then one N-image run_gradcam call
        # (the per-shard set-up, which real 250-image shards amortise, is then paid once for N images).
        with interpolated_positions(model, grid):
            shard_bare = timed(bare_forward, model, tensors)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with preloaded_model(model, mean, std):
            shard_cam = timed(cam_rule, manifest, text, "00000", args.images, *paths, cam_cfg)
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None

        # Where (b)'s time goes: the calls run_gradcam makes per image, timed one by one (one pass)
        g = torch.Generator().manual_seed(args.seed)
        fg = F.normalize(torch.randn(args.classes, model.text_projection.shape[1], generator=g), dim=-1)
        bg = F.normalize(torch.randn(args.background, model.text_projection.shape[1], generator=g), dim=-1)
        steps: dict[str, list[float]] = {"decode + preprocess": [], "softmax_gradcam": [], "HDF5 writes": []}
        with h5py.File(folder / "steps.h5", "w") as out:
            for i, path in enumerate(sorted(folder.glob("bench_*.jpg"))):
                start = time.perf_counter()
                with Image.open(path) as image:
                    tensor = preprocess_image(image, p, mean, std)
                steps["decode + preprocess"].append(time.perf_counter() - start)
                start = time.perf_counter()
                result = softmax_gradcam(model, tensor, fg, bg, precision=args.precision)
                steps["softmax_gradcam"].append(time.perf_counter() - start)
                start = time.perf_counter()
                size = {"height": args.height, "width": args.width}
                put_image(
                    out, f"c{i}", {"keys": np.arange(args.classes, dtype=np.int16), "cam": result.cams.numpy()}, size
                )
                put_image(out, f"a{i}", {"attention": result.attention_mean.numpy()}, size)
                steps["HDF5 writes"].append(time.perf_counter() - start)

        check = None
        if args.check:
            # the fast fp32 arithmetic against the reference arithmetic, on the first image at full size
            fast = softmax_gradcam(model, tensors[0], fg, bg, arithmetic="fast")
            slow = softmax_gradcam(model, tensors[0], fg, bg, arithmetic="reference")
            check = tuple(
                float((a - b).abs().max())
                for a, b in (
                    (fast.cams, slow.cams),
                    (fast.attention_mean, slow.attention_mean),
                    (fast.logits, slow.logits),
                )
            )

        caa_path = folder / "caa.h5"
        caa_wall, _ = timed(run_caa, paths[0], paths[1], clip_es.DEFAULTS["caa"], caa_path)
        cam_data, cam_file = stored_bytes(paths[0])
        caa_data, caa_file = stored_bytes(caa_path)
        _, affinity_file = stored_bytes(paths[1])
    load_after = os.getloadavg()

    ratios_w = sorted(c / b for b, c in zip(bare_w, cam_w))
    ratios_c = sorted(c / b for b, c in zip(bare_c, cam_c))
    med = statistics.median
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load_before[0]:.2f} before / {load_after[0]:.2f} after"
    )
    print(
        f"setup: {args.width}x{args.height} -> grid {grid[1]}x{grid[0]} = {grid[0] * grid[1]} tokens, "
        f"K={args.classes}, M={args.background}, attention layers [{args.attn_layers}:], "
        f"{args.images} images x {args.repeats} repeats, paired and interleaved (medians over pairs)"
    )
    print(f"(a) bare encode_image      : {med(bare_w) * 1e3:8.1f} ms/image wall, {med(bare_c) * 1e3:8.1f} ms CPU")
    print(
        f"(b) CAM rule (run_gradcam) : {med(cam_w) * 1e3:8.1f} ms/image wall, {med(cam_c) * 1e3:8.1f} ms CPU, "
        f"{1 / med(cam_w):.3f} images/s"
    )
    print(f"(b)/(a) per pair, wall     : {' '.join(f'{r:.3f}' for r in ratios_w)} -> median {med(ratios_w):.3f}")
    print(f"(b)/(a) per pair, CPU      : {' '.join(f'{r:.3f}' for r in ratios_c)} -> median {med(ratios_c):.3f}")
    print(
        f"one {args.images}-image shard       : (a) {shard_bare[0] / args.images * 1e3:.1f} ms/image, (b) "
        f"{shard_cam[0] / args.images * 1e3:.1f} ms/image wall -> (b)/(a) {shard_cam[0] / shard_bare[0]:.3f} wall, "
        f"{shard_cam[1] / shard_bare[1]:.3f} CPU"
    )
    bare_med = med(bare_w)
    print(
        "per-image steps of (b), wall: "
        + ", ".join(f"{name} {med(v) * 1e3:.1f} ms ({med(v) / bare_med:.3f} of (a))" for name, v in steps.items())
    )
    if check is not None:
        print(
            f"fast vs reference arithmetic: max |diff| cams {check[0]:.2e}, attention {check[1]:.2e}, "
            f"logits {check[2]:.2e}"
        )
    print(f"run_caa ({args.images} images)     : {caa_wall / args.images * 1e3:8.1f} ms/image wall")
    if gpu_peak is not None:
        print(f"GPU: {torch.cuda.get_device_name()}, {args.images}-image shard at batch size {args.batch_size}, "
              f"precision {args.precision}: {args.images / shard_cam[0]:.2f} images/s, "
              f"peak memory {gpu_peak:.0f} MiB")
    print(
        f"peak RSS: {rss_start:.0f} MiB at start, {rss_model:.0f} after loading the model, "
        f"{rss_bare:.0f} after a bare forward, {rss_cam:.0f} after a CAM run "
        f"(+{rss_cam - rss_bare:.0f} MiB for the CAM path)"
    )
    print(
        f"kept bytes/image: CAM datasets {cam_data:.0f} + CAA datasets {caa_data:.0f} = {cam_data + caa_data:.0f} B; "
        f"whole files {cam_file:.0f} + {caa_file:.0f} = {cam_file + caa_file:.0f} B "
        f"(intermediate affinity file {affinity_file:.0f} B/image, not kept)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
