"""Benchmark of the dense-CRF stage on VOC-sized synthetic inputs.

Measures, per image, (a) the bare pydensecrf calls (DenseCRF2D, setUnaryEnergy, both pairwise
terms, inference, Q to numpy) on a precomputed unary, (b) our per-image path ``crf_one_image``
(upsampling of patch-resolution CAMs, probability stack, unary, CRF, labels and confidence), and
(c) ``crf_many`` wall time over many images with 1 and N workers.

Inputs are random but structured like photographs: smooth backgrounds, a few uniformly coloured
shapes with soft noise, and patch-resolution CAMs that cover (and overshoot) two of the shapes.

    .venv/bin/python benchmarks/bench_crf.py                       # defaults: 500x375, K=2, 32x24 CAMs
    .venv/bin/python benchmarks/bench_crf.py --markdown docs/bench_crf.md --many 40 --workers 2
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
from datetime import datetime, timezone

import cv2
import numpy as np
import pydensecrf.densecrf as dcrf

from wsss import crf


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A structured RGB uint8 image and the boolean masks of its shapes."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3).astype(np.float32)
    slope = rng.uniform(-0.15, 0.15, (2, 3)).astype(np.float32)
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    masks = []
    for _ in range(int(rng.integers(3, 6))):
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(0.08, 0.3) * height, rng.uniform(0.08, 0.3) * width
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image[mask] = rng.uniform(0, 255, 3)
        masks.append(mask)
    image += cv2.GaussianBlur(rng.normal(0, 6, (height, width, 3)).astype(np.float32), (0, 0), 1.0)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def synthetic_cams(rng: np.random.Generator, masks: list[np.ndarray], k: int, patch_hw: tuple[int, int]) -> np.ndarray:
    """(k, h, w) float32 patch-resolution CAMs, min-max normalised, from blurred shape masks plus noise."""
    h, w = patch_hw
    cams = np.empty((k, h, w), dtype=np.float32)
    for c in range(k):
        small = cv2.resize(masks[c % len(masks)].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        cam = cv2.GaussianBlur(small, (0, 0), 0.8) + rng.uniform(0, 0.15, (h, w)).astype(np.float32)
        cams[c] = (cam - cam.min()) / max(float(cam.max() - cam.min()), 1e-6)
    return cams


def make_items(n: int, height: int, width: int, k: int, patch_hw: tuple[int, int], seed: int) -> list[tuple]:
    """n (image_id, image, cams, keys) tuples with distinct class keys."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        image, masks = synthetic_image(rng, height, width)
        cams = synthetic_cams(rng, masks, k, patch_hw)
        keys = rng.choice(20, size=k, replace=False)
        items.append((f"bench_{i:04d}", image, cams, keys))
    return items


def bare_pydensecrf(image: np.ndarray, unary: np.ndarray, params: crf.CrfParams) -> np.ndarray:
    """The official per-image CRF calls and nothing else."""
    n_classes = unary.shape[0]
    height, width = image.shape[:2]
    d = dcrf.DenseCRF2D(width, height, n_classes)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    d.addPairwiseBilateral(
        sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image, compat=params.bilateral_compat
    )
    q = d.inference(params.iters)
    return np.array(q).reshape((n_classes, height, width))


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def per_image(items: list[tuple], cfg: crf.CrfConfig, repeats: int) -> dict[str, list[float]]:
    """Interleaved timings of (a) bare pydensecrf and (b) crf_one_image, so load drift hits both alike."""
    out: dict[str, list[float]] = {"bare_wall": [], "bare_cpu": [], "stage_wall": [], "stage_cpu": []}
    for _ in range(repeats):
        for image_id, image, cams, keys in items:
            # Inputs of the bare calls prepared outside the timer (they are part of (b) only).
            crf_img = crf.crf_image(image, cfg.image_mode)
            maps = crf.upsample_cams(cams, image.shape[:2], cfg.faithful_upsample)
            unary = crf.unary_from_probabilities(crf.probability_stack(maps, cfg.alpha))
            wall, cpu = timed(bare_pydensecrf, crf_img, unary, cfg.params)
            out["bare_wall"].append(wall)
            out["bare_cpu"].append(cpu)
            wall, cpu = timed(crf.crf_one_image, image, cams, keys, cfg, image_id)
            out["stage_wall"].append(wall)
            out["stage_cpu"].append(cpu)
    return out


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its reaped children (the pool workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def many(items: list[tuple], cfg: crf.CrfConfig, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its workers) of crf_many over all items, pool start-up included."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    n = sum(1 for _ in crf.crf_many(items, cfg, workers=workers, progress_stream=None))
    assert n == len(items)
    # The pool has been joined here, so its workers' CPU time is in RUSAGE_CHILDREN.
    return time.perf_counter() - start, _cpu_seconds() - cpu


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally append) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=2, help="K, foreground classes per image")
    parser.add_argument("--patch", type=int, nargs=2, default=(24, 32), metavar=("H", "W"), help="CAM grid")
    parser.add_argument("--images", type=int, default=8, help="images for the per-image timings")
    parser.add_argument("--repeats", type=int, default=2, help="passes over those images")
    parser.add_argument("--many", type=int, default=40, help="images for the crf_many timing")
    parser.add_argument("--workers", type=int, default=2, help="worker count compared with 1")
    parser.add_argument("--image-mode", default="wrapped_bgr_mean", choices=crf.IMAGE_MODES)
    parser.add_argument("--from-files", action="store_true", help="crf_many reads JPEGs written to a temp folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", default=None, help="append a Markdown section to this file")
    args = parser.parse_args(argv)

    cfg = crf.CrfConfig(image_mode=args.image_mode)
    load_before = os.getloadavg()
    items = make_items(args.images, args.height, args.width, args.classes, tuple(args.patch), args.seed)
    timings = per_image(items, cfg, args.repeats)
    med = {key: statistics.median(values) for key, values in timings.items()}

    many_items = make_items(args.many, args.height, args.width, args.classes, tuple(args.patch), args.seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.from_files:
            for idx, (image_id, image, cams, keys) in enumerate(many_items):
                path = os.path.join(tmp, f"{image_id}.jpg")
                cv2.imwrite(path, image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                many_items[idx] = (image_id, path, cams, keys)
        wall_1, cpu_1 = many(many_items, cfg, 1)
        wall_n, cpu_n = many(many_items, cfg, args.workers)
    load_after = os.getloadavg()

    rows = [
        ("(a) bare pydensecrf, per image", f"{med['bare_wall'] * 1e3:.1f} ms", f"{med['bare_cpu'] * 1e3:.1f} ms"),
        ("(b) crf_one_image, per image", f"{med['stage_wall'] * 1e3:.1f} ms", f"{med['stage_cpu'] * 1e3:.1f} ms"),
        (
            "(b)/(a)",
            f"{med['stage_wall'] / med['bare_wall']:.3f}x",
            f"{med['stage_cpu'] / med['bare_cpu']:.3f}x",
        ),
        (f"(c) crf_many, {args.many} images, 1 worker", f"{wall_1:.2f} s", f"{cpu_1:.2f} s"),
        (f"(c) crf_many, {args.many} images, {args.workers} workers", f"{wall_n:.2f} s", f"{cpu_n:.2f} s"),
        (f"(c) speed-up {args.workers} vs 1 workers", f"{wall_1 / wall_n:.2f}x", f"{cpu_n / cpu_1:.2f}x CPU"),
        # Throughput if the workers had had the cores to themselves: serial wall over parallel CPU per worker.
        (
            f"(c) ideal-core speed-up (1-worker CPU / ({args.workers}-worker CPU / {args.workers}))",
            f"{args.workers * cpu_1 / cpu_n:.2f}x",
            "",
        ),
    ]
    setup = (
        f"{args.width}x{args.height} image, K={args.classes}, CAMs {args.patch[1]}x{args.patch[0]}, "
        f"image_mode={args.image_mode}, per-image medians of {len(timings['bare_wall'])} runs, "
        f"crf_many inputs from {'JPEG files' if args.from_files else 'memory'}; "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before / {load_after[0]:.2f} after"
    )
    width = max(len(r[0]) for r in rows)
    print(setup)
    print(f"{'measure':<{width}}  {'wall':>10}  {'CPU':>12}")
    for name, wall, cpu in rows:
        print(f"{name:<{width}}  {wall:>10}  {cpu:>12}")

    if args.markdown:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            f"\n## Dense CRF benchmark ({stamp}, {platform.node()}, Python {platform.python_version()})\n",
            f"\n{setup}\n\n| measure | wall | CPU (this process; with its workers in (c)) |\n|---|---|---|\n",
        ]
        lines += [f"| {name} | {wall} | {cpu} |\n" for name, wall, cpu in rows]
        with open(args.markdown, "a", encoding="utf-8") as handle:
            handle.writelines(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
