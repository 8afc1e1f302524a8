"""Content digests: SHA-256 of files and of canonical-JSON parameter structures."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["file_digest", "canonical_json", "params_digest", "check_sha256"]


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


def check_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise ValueError naming the file and both digests unless its SHA-256 starts with ``expected`` (>= 8 hex)."""
    expected = expected.strip().lower()
    if len(expected) < 8 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"sha256 for {path} must be a hex digest (or a prefix of >= 8 hex digits), got {expected!r}")
    actual = file_digest(path)
    if not actual.startswith(expected):
        raise ValueError(f"sha256 mismatch for {path}: expected {expected}, got {actual}")
