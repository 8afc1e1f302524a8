"""Torch devices and compute settings: the default device, and torch threads plus a GPU slot per rule job."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from wsss.gpu_slots import default_lock_dir, gpu_slot

__all__ = ["default_device", "compute_job", "visible_cuda_devices", "SLOT_LOG_PREFIX"]

log = logging.getLogger(__name__)
# The line every GPU rule's log gets (benchmarks/gpu_acceptance.py reads it back to check the device used).
SLOT_LOG_PREFIX = "GPU slot:"


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def compute_job(threads: int, gpus: int = 0) -> Iterator[str | None]:
    """Run a rule's work with ``threads`` torch threads and, for GPU rules, its own GPU slot.

    The thread count is set explicitly because float reductions depend on it: a job must compute the
    same numbers locally and under SLURM, whatever the scheduler exports.
    """
    torch.set_num_threads(max(1, int(threads)))
    if not gpus:
        yield None
        return
    with gpu_slot(default_lock_dir(), count=int(gpus)) as devices:
        # Only now may CUDA start: it reads CUDA_VISIBLE_DEVICES once, and the slot has just set it.
        log.info("%s CUDA_VISIBLE_DEVICES=%s; torch sees %s", SLOT_LOG_PREFIX,
                 os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), visible_cuda_devices())
        yield devices


def visible_cuda_devices() -> str:
    """The CUDA devices this process can use, each with its name and UUID, or 'no CUDA device'."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    return "; ".join(f"cuda:{i} {torch.cuda.get_device_name(i)} uuid={torch.cuda.get_device_properties(i).uuid}"
                     for i in range(torch.cuda.device_count()))
