"""Compute settings for rule jobs: torch threads from the rule's `threads`, and a GPU slot per GPU job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from wsss.gpu_slots import default_lock_dir, gpu_slot


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
        yield devices
