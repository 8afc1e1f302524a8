"""Held-out selection of the demo world's CAA power and box threshold (a study, not a speed benchmark).

The demo config's `caa` values were chosen with this script on `clip_pretrain` images: the CLIP sees
their captions, but neither the CAM evaluation (`train`) nor the segmenter evaluation (`val`) uses
them. It runs the CAM stage's softmax-GradCAM on the pipeline's CLIP and text features, refines the
CAMs with every (power, threshold) pair, and prints mIoU for the initial and refined maps at each
background exponent α.

    .venv/bin/python benchmarks/demo_caa_selection.py --first 0 --count 300
    .venv/bin/python benchmarks/demo_caa_selection.py --first 300 --count 300 --powers 1 2 --thresholds 0.3 0.4
"""

from __future__ import annotations

import argparse
import json
import itertools
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from wsss.clip.affinity import refine_cams, sinkhorn_affinity
from wsss.clip.factory import patch_size
from wsss.clip.transform import image_stats, preprocess_image
from wsss.demo.clip import load_demo_clip
from wsss.methods.clip_es.softmax_gradcam import softmax_gradcam
from wsss.h5store import open_stage, provenance
from wsss.metrics import confusion_matrix, scores
from wsss.method_kinds import resolve_methods
from wsss.stages.evaluate import cam_labels, read_gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=Path("results/demo"), help="a finished demo run")
    ap.add_argument("--config", type=Path, default=Path("config.yaml"),
                    help="for the method instance's cam section and caa.sinkhorn_rounds")
    ap.add_argument("--method", default="clip_es", help="the clip_es instance of the config whose CAMs are studied")
    ap.add_argument("--split", default="clip_pretrain")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--powers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.55])
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0])
    args = ap.parse_args()
    torch.set_num_threads(2)

    config = yaml.safe_load(args.config.read_text())
    method = resolve_methods(config["methods"])[args.method]
    cam, rounds = method["cam"], int(method["caa"]["sinkhorn_rounds"])
    world = args.results / "demo_world"
    model = load_demo_clip(args.results / "clip" / "demo_clip.pt", "cpu")
    mean, std = image_stats(model)
    patch = patch_size(model)
    # the text features this instance's GradCAM used, as its provenance records them
    gradcam_inputs = json.loads(provenance(next((args.results / args.method / "gradcam").glob("*/*.h5")))["input_digests"])
    text_path = next(path for path in gradcam_inputs if path.endswith("text_features.h5"))
    with open_stage(text_path) as text:
        foreground = torch.from_numpy(text["foreground"][()])
        background = torch.from_numpy(text["background"][()])
    n_class = 1 + foreground.shape[0]
    ids = (world / "ImageSets" / "Segmentation" / f"{args.split}.txt").read_text().split()
    ids = ids[args.first:args.first + args.count]

    settings = list(itertools.product(args.powers, args.thresholds))
    hist = {(name, a): np.zeros((n_class, n_class), np.int64)
            for name in ["initial", *settings] for a in args.alphas}
    for image_id in ids:
        gt = read_gt(world / "SegmentationClass" / f"{image_id}.png")
        keys = np.array(sorted(int(v) - 1 for v in np.unique(gt) if v not in (0, 255)), dtype=np.int64)
        if not len(keys):
            continue
        with Image.open(world / "JPEGImages" / f"{image_id}.jpg") as image:
            x = preprocess_image(image, patch, mean, std, scale=float(cam.get("input_scale", 1.0)))
        result = softmax_gradcam(model, x, foreground[torch.from_numpy(keys)], background,
                                 attn_layers=tuple(cam.get("attn_layers", (-8, None))))
        affinity = sinkhorn_affinity(result.attention_mean, rounds=rounds)
        maps = {"initial": result.cams}
        for power, threshold in settings:
            maps[(power, threshold)] = refine_cams(result.cams, affinity, power=power, threshold=threshold)
        valid = gt != 255
        for name, m in maps.items():
            for a in args.alphas:
                pred = cam_labels(m.numpy(), keys, gt.shape, a)
                hist[(name, a)] += confusion_matrix(gt[valid], pred[valid], n_class)

    alphas = " / ".join(f"α={a:g}" for a in args.alphas)
    print(f"{args.split}[{args.first}:{args.first + len(ids)}], mIoU at {alphas}")
    base = [scores(hist[("initial", a)])["miou"] for a in args.alphas]
    print("initial CAM            " + " / ".join(f"{v:.4f}" for v in base))
    for power, threshold in settings:
        vals = [scores(hist[((power, threshold), a)])["miou"] for a in args.alphas]
        diffs = " / ".join(f"{v - b:+.4f}" for v, b in zip(vals, base))
        print(f"CAA power {power} box {threshold:.2f}  " + " / ".join(f"{v:.4f}" for v in vals) + f"   vs initial {diffs}")


if __name__ == "__main__":
    main()
