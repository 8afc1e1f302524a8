"""The method contract: one HDF5 CAM shard per (method, split, shard) in a layout every method writes.

Per image ``/<image_id>``: ``keys`` (int16, the present classes' 0-based indices), ``cam`` (float32
``(K, h, w)`` in [0, 1], the map the shared tail turns into pseudo masks) and any number of extra maps
``cam_<name>`` of the same shape (earlier stages of the method, scored but not used downstream); group
attributes ``height`` and ``width`` give the original image size. docs/hdf5-layout.md has the details.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from wsss.h5store import put_image

STAGE = "cams"
FINAL_MAP = "cam"


def map_names(stored: Mapping[str, Any]) -> list[str]:
    """The CAM maps of one stored image: ``cam`` first, then the extra ``cam_*`` maps by name."""
    extra = sorted(name for name in stored if name.startswith(f"{FINAL_MAP}_"))
    return [FINAL_MAP, *extra] if FINAL_MAP in stored else extra


def put_cams(
    handle: h5py.File,
    image_id: str,
    keys: np.ndarray,
    maps: Mapping[str, np.ndarray],
    size: tuple[int, int],
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write one image's CAMs in the contract layout, checking names, dtypes and shapes."""
    keys = np.asarray(keys)
    if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer):
        raise ValueError(f"{image_id}: keys must be a 1-D integer array, got {keys.dtype} {keys.shape}")
    if FINAL_MAP not in maps:
        raise ValueError(f"{image_id}: the contract needs the final map {FINAL_MAP!r}, got {sorted(maps)}")
    grid = None
    arrays = {"keys": keys.astype(np.int16)}
    for name, cam in maps.items():
        if name != FINAL_MAP and not name.startswith(f"{FINAL_MAP}_"):
            raise ValueError(f"{image_id}: map {name!r} must be named {FINAL_MAP!r} or {FINAL_MAP}_<name>")
        cam = np.asarray(cam, dtype=np.float32)
        if cam.ndim != 3 or cam.shape[0] != len(keys):
            raise ValueError(f"{image_id}: map {name!r} has shape {cam.shape}, expected ({len(keys)}, h, w)")
        if grid is not None and cam.shape[1:] != grid:
            raise ValueError(f"{image_id}: map {name!r} has grid {cam.shape[1:]}, the others {grid}")
        grid = cam.shape[1:]
        arrays[name] = cam
    height, width = size
    put_image(handle, image_id, arrays, {"height": int(height), "width": int(width), **(attrs or {})})
