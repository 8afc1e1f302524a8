"""HDF5 stage store: one file per (stage, shard), one group per image id, provenance on every file."""

from __future__ import annotations

import io
import json
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsss import __version__
from wsss.atomic import atomic_output
from wsss.digests import canonical_json, file_digest, params_digest
from wsss.image_ids import invalid_id_reason

__all__ = [
    "SCHEMA_VERSION",
    "canonical_json",
    "params_digest",
    "file_digest",
    "normalise_locking",
    "write_stage",
    "open_stage",
    "provenance",
    "put_image",
    "get_image",
    "image_ids",
    "iter_images",
    "set_image_order",
    "skipped_images",
]

Locking = bool | str | None

SCHEMA_VERSION = 1
_PROVENANCE_KEYS = ("wsss_version", "schema_version", "stage", "params_digest", "params_json", "input_digests")


def normalise_locking(locking: Locking) -> bool | str | None:
    """Map the config value of ``hdf5.locking`` to what h5py accepts."""
    if locking in (None, True, False):
        return locking
    if isinstance(locking, str) and locking.lower() in ("best-effort", "best_effort"):
        return "best-effort"
    raise ValueError(f"hdf5.locking must be true, false or 'best-effort', got {locking!r}")


def _environment() -> dict[str, str]:
    """Versions that shape numerical results, recorded next to every output."""
    import torch  # local import: the store itself does not need torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


@contextmanager
def write_stage(
    path: str | os.PathLike,
    stage: str,
    params: Mapping[str, Any],
    inputs: Sequence[str | os.PathLike] = (),
    locking: Locking = None,
    skipped: Mapping[str, str] | None = None,
) -> Iterator[h5py.File]:
    """Open a stage file for writing under a temporary name; rename it into place only on success.

    A job killed or failing inside the block leaves no file at ``path``: readers never see a
    half-written shard, and Snakemake sees the output as missing. ``skipped`` (image id -> reason)
    records the shard's images the stage left out. A full disk is an ordinary error naming ``path``
    (see ``_GuardedFile``: the HDF5 library never sees the failed write). ``locking`` is kept for the
    callers; a file written through Python needs none.
    """
    normalise_locking(locking)  # still validated: the same setting governs every reader
    with atomic_output(path) as tmp, _GuardedFile(tmp) as target:
        handle = _StageFile(target, "w")
        try:
            attrs = handle.attrs
            attrs["wsss_version"] = __version__
            attrs["schema_version"] = SCHEMA_VERSION
            attrs["stage"] = stage
            attrs["params_json"] = canonical_json(params)
            attrs["params_digest"] = params_digest(params)
            attrs["input_digests"] = canonical_json({str(p): file_digest(p) for p in inputs})
            attrs["environment"] = canonical_json(_environment())
            attrs["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            attrs["skipped_json"] = canonical_json(dict(skipped or {}))
            yield handle
        finally:
            # closed before the rename on success, and before the removal on failure
            handle.close()
        target.raise_refused()


class _StageFile(h5py.File):
    """A stage file being written, with the guard of its bytes (``put_image`` stops early on a full disk)."""

    guard: _GuardedFile | None = None

    def __init__(self, target: _GuardedFile, mode: str) -> None:
        super().__init__(target, mode)
        self.guard = target


class _GuardedFile(io.RawIOBase):
    """The bytes of an HDF5 file, written through to ``path`` until the disk refuses, then kept in memory.

    The HDF5 library cannot survive a failed write: out of space, it reports the error only while
    freeing its objects (where Python ignores it) and then crashes (SIGSEGV) when the file is closed.
    So HDF5 never sees one: a refused write, and every write after it, is kept here instead (later
    reads see them), and ``raise_refused`` reports the disk's error once HDF5 has closed the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self._file = open(path, "w+b", buffering=0)  # unbuffered: a refused write fails at once
        self._position = self._size = 0
        self._kept: list[tuple[int, bytes]] = []  # (offset, bytes) written after the disk refused
        self.refused: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def write(self, data) -> int:
        data = bytes(data)
        done = 0
        if self.refused is None:
            try:
                self._file.seek(self._position)
                while done < len(data):
                    done += self._file.write(data[done:])
            except OSError as error:
                self.refused = error
        if done < len(data):
            self._kept.append((self._position + done, data[done:]))
        self._position += len(data)
        self._size = max(self._size, self._position)
        return len(data)

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._position))
        view = memoryview(buffer).cast("B")[:count]
        self._file.seek(self._position)
        got = self._file.readinto(view) or 0
        view[got:] = bytes(count - got)  # beyond what reached the disk
        for offset, data in self._kept:  # in writing order: later writes win
            start, stop = max(offset, self._position), min(offset + len(data), self._position + count)
            if start < stop:
                view[start - self._position:stop - self._position] = data[start - offset:stop - offset]
        self._position += count
        return count

    def truncate(self, size: int | None = None) -> int:
        size = self._position if size is None else size
        if self.refused is None:
            try:
                self._file.truncate(size)
            except OSError as error:
                self.refused = error
        self._size = size
        return size

    def close(self) -> None:
        self._file.close()
        super().close()

    def raise_refused(self) -> None:
        """Raise the disk's error if it refused a write (``atomic_output`` then names the stage file)."""
        if self.refused is not None:
            raise self.refused


def open_stage(path: str | os.PathLike, locking: Locking = None) -> h5py.File:
    """Open a finished stage file read-only, with a clear error if it is missing or not a stage file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage file not found: {path}")
    try:
        handle = h5py.File(path, "r", locking=normalise_locking(locking))
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error})") from error
    try:
        _check_attributes(handle)
    except ValueError:
        handle.close()
        raise
    return handle


def _check_attributes(handle: h5py.File) -> None:
    """Validate the provenance attributes a reader relies on; ValueError names the file and attribute."""
    missing = [key for key in _PROVENANCE_KEYS if key not in handle.attrs]
    if missing:
        raise ValueError(f"{handle.filename} is not a wsss stage file (missing attributes {missing})")
    version = _plain(handle.attrs["schema_version"])
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ValueError(f"{handle.filename}: attribute schema_version is {version!r}; this wsss reads "
                         f"1..{SCHEMA_VERSION} (a file from a newer wsss, or not a stage file)")
    if not isinstance(_plain(handle.attrs["stage"]), str):
        raise ValueError(f"{handle.filename}: attribute stage must be a string")
    _json_attr(handle, "params_json", dict, None)
    _json_attr(handle, "input_digests", dict, None)
    order = _json_attr(handle, "image_order", list, None)
    if order is not None:
        strays = [image_id for image_id in order if not isinstance(image_id, str) or image_id not in handle]
        if strays:
            raise ValueError(f"{handle.filename}: attribute image_order names {strays[0]!r}, which is not an image group")
    skipped = _json_attr(handle, "skipped_json", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in skipped.items()):
        raise ValueError(f"{handle.filename}: attribute skipped_json must map image ids to reasons")


def _json_attr(handle: h5py.File, name: str, kind: type, default: Any) -> Any:
    """A JSON-encoded attribute decoded and type-checked; ``default`` when it is absent."""
    if name not in handle.attrs:
        return default
    try:
        value = json.loads(_plain(handle.attrs[name]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{handle.filename}: attribute {name} is not valid JSON ({error})") from error
    if not isinstance(value, kind):
        raise ValueError(f"{handle.filename}: attribute {name} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def provenance(path: str | os.PathLike, locking: Locking = None) -> dict[str, Any]:
    """Return a stage file's provenance attributes as plain Python values."""
    with open_stage(path, locking) as handle:
        return {key: _plain(value) for key, value in handle.attrs.items()}


def put_image(
    handle: h5py.File,
    image_id: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    compression: str | None = "gzip",
) -> h5py.Group:
    """Write one image's arrays (and scalar attributes) as the group ``/<image_id>``."""
    if invalid_id_reason(image_id):
        raise ValueError(f"image id {image_id!r} cannot name an HDF5 group ({invalid_id_reason(image_id)})")
    group = handle.create_group(image_id)
    for name, array in arrays.items():
        array = np.asarray(array)
        # Chunked compression only pays off for real arrays; tiny vectors stay contiguous.
        use_compression = compression if array.size >= 64 else None
        group.create_dataset(name, data=array, compression=use_compression)
    for key, value in (attrs or {}).items():
        group.attrs[key] = value
    guard = getattr(handle, "guard", None)
    if guard is not None:
        guard.raise_refused()  # stop at the next image once the disk is full, not after the whole shard
    return group


def get_image(handle: h5py.File, image_id: str) -> dict[str, Any]:
    """Read one image's arrays and attributes into a dict (arrays under their dataset names)."""
    if image_id not in handle:
        raise KeyError(f"image id {image_id!r} not in {handle.filename}")
    group = handle[image_id]
    out: dict[str, Any] = {name: group[name][()] for name in group}
    out.update({key: _plain(value) for key, value in group.attrs.items()})
    return out


def image_ids(handle: h5py.File) -> list[str]:
    """Image ids stored in a stage file, in the order they were written."""
    order = _json_attr(handle, "image_order", list, None)
    if order is not None:
        return [str(x) for x in order]
    return sorted(handle.keys())


def iter_images(paths: Sequence[str | os.PathLike], locking: Locking = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (image id, stored arrays and attributes) over a list of stage files, one image at a time."""
    for path in paths:
        with open_stage(path, locking) as handle:
            for image_id in image_ids(handle):
                yield image_id, get_image(handle, image_id)


def set_image_order(handle: h5py.File, ids: Sequence[str]) -> None:
    """Record the writing order of image groups (HDF5 iterates groups alphabetically)."""
    handle.attrs["image_order"] = canonical_json(list(ids))


def skipped_images(handle: h5py.File) -> dict[str, str]:
    """Image id -> reason for the shard's images a stage left out (see ``write_stage``)."""
    return _json_attr(handle, "skipped_json", dict, {})


def _plain(value: Any) -> Any:
    """Turn numpy scalars and byte strings from HDF5 attributes into plain Python values."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
