"""Matrix-multiply throughput of fp32, bf16 and fp16 on this machine, at ViT-B/16's largest product.

    .venv/bin/python benchmarks/bench_gemm_dtypes.py [--threads 2] [--device cpu]

One MLP expansion of ViT-B/16 on a VOC-size image: (769 tokens x 768) @ (768 x 3072). The CAM stage's
reduced-precision modes are worth having only where a format is faster than fp32 (docs/precision.md).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def milliseconds_per_product(dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """Median wall time of one (769 x 768) @ (768 x 3072) product in ``dtype``, in ms."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(769, 768, generator=generator).to(device, dtype)
    weight = torch.randn(3072, 768, generator=generator).to(device, dtype)
    times = []
    for index in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        F.linear(tokens, weight)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= 3:  # warm-up products are not timed
            times.append(time.perf_counter() - began)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    flops = 2 * 769 * 768 * 3072
    reference = milliseconds_per_product(torch.float32, device, args.repeats)
    print("| dtype | ms per product | GFLOP/s | time / fp32 |")
    print("|---|---|---|---|")
    for name, dtype in DTYPES.items():
        ms = reference if dtype == torch.float32 else milliseconds_per_product(dtype, device, args.repeats)
        print(f"| {name} | {ms:.2f} | {flops / ms / 1e6:.0f} | {ms / reference:.2f} |")


if __name__ == "__main__":
    main()
