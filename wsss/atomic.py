"""Atomic file output: write under a temporary sibling name, rename onto the target only on success."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "write_text_atomic", "torch_save_atomic"]


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling ``.<name>.tmp-<pid>`` of ``path``; on success rename it onto ``path``.

    The parent folder is created. On any exception (KeyboardInterrupt included) the temporary file is
    removed and the exception re-raised, so readers (and Snakemake) never see a half-written ``path``:
    ``os.replace`` is atomic within one file system.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def torch_save_atomic(obj: object, path: str | os.PathLike) -> None:
    """torch.save ``obj`` atomically, flushed and fsync'ed to disk before the rename."""
    import torch  # local import: atomic output of text and tables does not need torch

    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
