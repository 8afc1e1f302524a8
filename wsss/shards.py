"""Static shards: fixed-size slices of a split's manifest, named by a zero-padded index."""

from __future__ import annotations

import math

import pandas as pd

SHARD_PATTERN = r"\d{5}"


def shard_names(n_items: int, shard_size: int) -> list[str]:
    """Names of the shards covering ``n_items`` rows ("00000", "00001", ...)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [f"{i:05d}" for i in range(math.ceil(n_items / shard_size))]


def shard_rows(table: pd.DataFrame, shard: str, shard_size: int) -> pd.DataFrame:
    """The manifest rows that belong to one shard."""
    index = int(shard)
    start = index * shard_size
    if index < 0 or start >= len(table):
        raise ValueError(f"shard {shard!r} is outside a manifest of {len(table)} rows at shard_size {shard_size}")
    return table.iloc[start : start + shard_size].reset_index(drop=True)
