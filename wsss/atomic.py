"""Atomic file output: write under a temporary sibling name, rename onto the target only on success."""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["OutOfSpaceError", "atomic_output", "remove_stale_temporaries", "write_text_atomic", "torch_save_atomic"]

# errno values of a write that ran out of room: disk full, quota, the process's file-size limit
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class OutOfSpaceError(OSError):
    """A write that ran out of room, naming the file that could not be written."""


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling ``.<name>.tmp-<pid>`` of ``path``; on success rename it onto ``path``.

    The parent folder is created. On any exception (KeyboardInterrupt included) the temporary file is
    removed and the exception re-raised, so readers (and Snakemake) never see a half-written ``path``:
    ``os.replace`` is atomic within one file system. A process killed outright (SIGKILL, OOM killer,
    node failure) cannot clean up, so every writer first removes the temporary siblings that earlier
    writers of ``path`` left; this assumes one writer per output at a time, which Snakemake guarantees.
    Errors while writing (a full disk, a file-size limit) are re-raised naming ``path``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as error:
        _remove(tmp)
        code = _no_space_errno(error)
        # an inner writer's error already names its own file: an outer writer passes it on unchanged
        if code is not None and not isinstance(error, OutOfSpaceError):
            raise OutOfSpaceError(code, f"cannot write {final}: {os.strerror(code)} (nothing was written under "
                                  "that name)") from error
        raise


def _no_space_errno(error: BaseException) -> int | None:
    """The errno of a write that ran out of room, also where h5py reports it only in its message."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return error.errno
        found = re.search(r"errno = (\d+)", str(error))
        if found and int(found.group(1)) in _NO_SPACE:
            return int(found.group(1))
        error = error.__cause__ or error.__context__
    return None


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.tmp-<pid>`` siblings of ``path`` that killed writers left; return them."""
    final = Path(path)
    stale = sorted(final.parent.glob(f".{glob.escape(final.name)}.tmp-*")) if final.parent.is_dir() else []
    for leftover in stale:
        _remove(leftover)
    return stale


def _remove(path: Path) -> None:
    """Delete a file or a folder tree (atomic outputs may be folders), if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def torch_save_atomic(obj: object, path: str | os.PathLike) -> None:
    """torch.save ``obj`` atomically, flushed and fsync'ed to disk before the rename."""
    import io

    import torch  # local import: atomic output of text and tables does not need torch

    # Serialised in memory first: torch's zip writer turns a failed file write (a full disk) into an
    # unhelpful "unexpected pos" error, while a plain file write reports ENOSPC.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(buffer.getbuffer())
        handle.flush()
        os.fsync(handle.fileno())
