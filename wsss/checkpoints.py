"""Training checkpoints: global RNG states in a weights_only-loadable form, and atomic checkpoint files."""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from wsss.atomic import atomic_output, torch_save_atomic

__all__ = ["HISTORY_NAME", "mix_seed", "rng_state", "set_rng_state", "save_checkpoint", "write_history"]

# the loss history every training rule writes beside its checkpoints
HISTORY_NAME = "loss_history.csv"


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed derived from integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def rng_state() -> dict:
    """Global RNG states (torch CPU/CUDA, numpy, python) in a weights_only-loadable form."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


def save_checkpoint(obj: object, path: str | os.PathLike) -> None:
    """Write a checkpoint (any torch.save-able object) atomically: temporary sibling, fsync, rename."""
    torch_save_atomic(obj, path)


def write_history(history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> None:
    """A training run's loss history (one row per epoch or logging window) as CSV, atomically."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
