"""The one rule for image ids, shared by the manifest, every HDF5 stage file and the PNG export."""

from __future__ import annotations

__all__ = ["invalid_id_reason"]


def invalid_id_reason(image_id: str) -> str:
    """Why ``image_id`` cannot name files, HDF5 groups and list-file entries, or "" when it can.

    Ids become ``<id>.png`` file names, ``/<id>`` HDF5 groups and space-separated list-file fields, so
    they must be non-empty, free of whitespace, control characters and path separators, and must not
    start with a dot (hidden files, ``..``).
    """
    if not image_id:
        return "empty"
    if any(ch.isspace() for ch in image_id):
        return "contains whitespace"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in image_id):
        return "contains a control character"
    if "/" in image_id or "\\" in image_id:
        return "contains a path separator"
    if image_id.startswith("."):
        return "starts with a dot"
    return ""
