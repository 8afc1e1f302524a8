"""Content digests: SHA-256 of files and of canonical-JSON parameter structures."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["file_digest", "canonical_json", "params_digest"]


def canonical_json(value: Any) -> str:
    """Serialise a parameter structure deterministically (sorted keys, no whitespace)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def params_digest(params: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a stage's parameters."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()


def file_digest(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
