"""HDF5 stage store: one file per (stage, shard), one group per image id, provenance on every file."""

from __future__ import annotations

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
) -> Iterator[h5py.File]:
    """Open a stage file for writing under a temporary name; rename it into place only on success.

    A job killed or failing inside the block leaves no file at ``path``: readers never see a
    half-written shard, and Snakemake sees the output as missing.
    """
    with atomic_output(path) as tmp:
        handle = h5py.File(tmp, "w", locking=normalise_locking(locking))
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
            yield handle
        finally:
            # closed before the rename on success, and before the removal on failure
            handle.close()


def open_stage(path: str | os.PathLike, locking: Locking = None) -> h5py.File:
    """Open a finished stage file read-only, with a clear error if it is missing or not a stage file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage file not found: {path}")
    handle = h5py.File(path, "r", locking=normalise_locking(locking))
    missing = [key for key in _PROVENANCE_KEYS if key not in handle.attrs]
    if missing:
        handle.close()
        raise ValueError(f"{path} is not a wsss stage file (missing attributes {missing})")
    return handle


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
    if "/" in image_id or image_id in ("", ".", ".."):
        raise ValueError(f"image id {image_id!r} cannot name an HDF5 group")
    group = handle.create_group(image_id)
    for name, array in arrays.items():
        array = np.asarray(array)
        # Chunked compression only pays off for real arrays; tiny vectors stay contiguous.
        use_compression = compression if array.size >= 64 else None
        group.create_dataset(name, data=array, compression=use_compression)
    for key, value in (attrs or {}).items():
        group.attrs[key] = value
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
    order = handle.attrs.get("image_order")
    if order is not None:
        return [str(x) for x in json.loads(order)]
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


def _plain(value: Any) -> Any:
    """Turn numpy scalars and byte strings from HDF5 attributes into plain Python values."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
