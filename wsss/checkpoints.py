"""Training checkpoints: global RNG states in a weights_only-loadable form, and atomic checkpoint files."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from wsss.atomic import torch_save_atomic

__all__ = ["mix_seed", "rng_state", "set_rng_state", "save_checkpoint"]


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
