"""One torch job on two threads against two one-thread jobs side by side, on the demo's own networks.

    .venv/bin/python benchmarks/bench_threads.py [--steps 8]

Measures training steps (forward + backward) of the demo CLIP's image tower (batch 32, 96 px) and of the
demo segmenter (DeepLabV2 on a ResNet-18 of width 16, batch 8, 96 px crops) three ways: one process with
1 thread, one process with 2 threads, and two 1-thread processes at once. Prints steps per second and the
throughput of each layout relative to one thread; this decides profiles/cpu's one thread per job.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def _clip_tower_step() -> tuple[torch.nn.Module, torch.Tensor]:
    from wsss.clip.factory import build_clip
    from wsss.demo.clip_settings import DEFAULT_SETTINGS
    from wsss.demo.clip import model_config

    model = build_clip(model_config(DEFAULT_SETTINGS)).visual.train()
    return model, torch.randn(32, 3, 96, 96)


def _segmenter_step() -> tuple[torch.nn.Module, torch.Tensor]:
    from wsss.segmenter.deeplab import build_deeplab

    model = build_deeplab("resnet18", 7, width=16, bn="train", msc_scales=()).train()
    return model, torch.randn(8, 3, 96, 96)


NETWORKS = {"demo CLIP image tower": _clip_tower_step, "segmenter": _segmenter_step}


def steps_per_second(network: str, threads: int, steps: int) -> float:
    """Forward + backward steps per second of one network with ``threads`` torch threads (after 2 warm-up steps)."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model, batch = NETWORKS[network]()
    for _ in range(2):
        model(batch).float().sum().backward()
    began = time.perf_counter()
    for _ in range(steps):
        model(batch).float().sum().backward()
    return steps / (time.perf_counter() - began)


def _child(network: str, threads: int, steps: int) -> subprocess.Popen:
    code = (f"import json, benchmarks.bench_threads as b; "
            f"print(json.dumps(b.steps_per_second({network!r}, {threads}, {steps})))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _rates(network: str, threads: int, steps: int, processes: int) -> list[float]:
    children = [_child(network, threads, steps) for _ in range(processes)]
    return [json.loads(child.communicate()[0]) for child in children]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    args = parser.parse_args()
    print("| network | 1 thread, steps/s | 2 threads | two 1-thread jobs (sum) | 2 threads / 1 | two jobs / 1 |")
    print("|---|---|---|---|---|---|")
    for network in NETWORKS:
        one = _rates(network, 1, args.steps, 1)[0]
        two_threads = _rates(network, 2, args.steps, 1)[0]
        side_by_side = sum(_rates(network, 1, args.steps, 2))
        print(f"| {network} | {one:.2f} | {two_threads:.2f} | {side_by_side:.2f} | "
              f"{two_threads / one:.2f} | {side_by_side / one:.2f} |")


if __name__ == "__main__":
    main()
