"""Cost of writing HDF5 stage files through ``write_stage``'s guard, against h5py writing to disk directly.

``write_stage`` hands HDF5 a Python file object (``wsss.h5store._GuardedFile``) so that a full disk is an
ordinary error rather than a crash; every chunk HDF5 writes then passes through Python. This writes the
same shard both ways (40 images: a 768x768 float32 attention map, as the CLIP-ES affinity file holds,
and two 375x500 CAMs, gzip) and prints the best of ``--repeats`` wall times and the file size.

    .venv/bin/python benchmarks/bench_stage_write.py --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from wsss.h5store import put_image, write_stage


def shard_arrays(rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Per image, an attention map (incompressible) and smooth CAMs (compressible)."""
    cam = np.tile(np.linspace(0, 1, 500, dtype=np.float32), (2, 375, 1))
    return [{"attention": rng.random((768, 768)).astype(np.float32), "cam": cam} for _ in range(40)]


def write_direct(path: Path, images: list[dict[str, np.ndarray]]) -> None:
    """The same groups and datasets with h5py on the file system (its default driver)."""
    with h5py.File(path, "w") as handle:
        for index, arrays in enumerate(images):
            group = handle.create_group(f"img{index}")
            for name, array in arrays.items():
                group.create_dataset(name, data=array, compression="gzip")


def write_guarded(path: Path, images: list[dict[str, np.ndarray]]) -> None:
    """The shard through ``write_stage`` and ``put_image``."""
    with write_stage(path, "bench", {}) as handle:
        for index, arrays in enumerate(images):
            put_image(handle, f"img{index}", arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    images = shard_arrays(np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as folder:
        for name, write in (("h5py direct", write_direct), ("write_stage", write_guarded)):
            times = []
            for _ in range(args.repeats):
                path = Path(folder) / f"{name.replace(' ', '_')}.h5"
                began = time.perf_counter()
                write(path, images)
                times.append(time.perf_counter() - began)
            print(f"{name:12s} best {min(times):.2f} s of {args.repeats}, {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
