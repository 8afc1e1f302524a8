"""Device assignment for GPU rules: each running job holds its own GPU slot (Snakemake assigns none)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_lock_dir() -> Path:
    """Machine-local folder for the slot lock files (override with WSSS_GPU_LOCK_DIR)."""
    return Path(os.environ.get("WSSS_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / f"wsss-gpu-slots-{os.getuid()}"))


@contextmanager
def gpu_job(requested: int) -> Iterator[str | None]:
    """Hold ``requested`` GPU slots for the duration of a rule's work; no-op for CPU rules and CPU-only hosts."""
    if not requested:
        yield None
        return
    from wsss.gpu_slots import gpu_slot

    with gpu_slot(default_lock_dir(), count=int(requested)) as devices:
        yield devices
