"""Digest of the package source a rule's script runs: the script and every wsss module it imports, transitively.

A rule passes this digest as a parameter, so editing any module its job executes reruns it (and only
it), while edits elsewhere leave it current. Imports are read with ``ast`` (function-level imports
included), never executed. Package data files named in a module's string literals count as its source.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

PACKAGE = "wsss"


def _module_file(package_root: Path, dotted: str) -> Path | None:
    """The file of a dotted module name under the package root (``x.py`` or ``x/__init__.py``), or None."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted_name(package_root: Path, path: Path) -> str:
    """The dotted module name of a file under the package root."""
    parts = list(path.relative_to(package_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _imported_names(tree: ast.AST, current: str | None, is_package: bool) -> Iterable[str]:
    """Dotted names an AST imports, relative imports resolved against the current module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and current:
                anchor = current.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            # `from wsss.x import y` may name a submodule y
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _data_files(tree: ast.AST, package_root: Path) -> set[Path]:
    """Package data files (under ``<package>/data``) that a module names in a string literal."""
    data_dir = package_root / "data"
    if not data_dir.is_dir():
        return set()
    names = {path.name: path for path in data_dir.iterdir() if path.is_file() and path.suffix != ".py"}
    return {names[node.value] for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names}


@lru_cache(maxsize=None)
def _direct_dependencies(path: Path, package_root: Path) -> frozenset[Path]:
    """Package files one source file imports directly (with their parent packages' ``__init__``)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    inside = path.is_relative_to(package_root)
    current = _dotted_name(package_root, path) if inside else None
    found: set[Path] = set(_data_files(tree, package_root))
    for name in _imported_names(tree, current, path.name == "__init__.py"):
        parts = name.split(".")
        # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
        for end in range(1, len(parts) + 1):
            module = _module_file(package_root, ".".join(parts[:end]))
            if module is not None:
                found.add(module)
    found.discard(path)
    return frozenset(found)


def package_sources(script: str | Path, package_root: str | Path, exclude: Iterable[str] = ()) -> list[Path]:
    """The script and every package file it imports, transitively, sorted; imports of the subpackages named
    in ``exclude`` (folders of the package root) are not followed."""
    package_root = Path(package_root).resolve()
    excluded = [package_root / name for name in exclude]
    seen: set[Path] = set()
    todo = [Path(script).resolve()]
    while todo:
        path = todo.pop()
        if path in seen or any(path.is_relative_to(folder) for folder in excluded):
            continue
        seen.add(path)
        if path.suffix == ".py":
            todo.extend(_direct_dependencies(path, package_root) - seen)
    return sorted(seen)


def source_digest(script: str | Path, package_root: str | Path, exclude: Iterable[str] = ()) -> str:
    """SHA-256 (16 hex digits) over the script's and its package modules' relative paths and bytes.

    ``exclude`` names subpackages whose code the run never executes (the demo world's, in a run on real
    data: its imports sit in branches taken only for the demo), so editing them changes no digest.
    """
    root = Path(package_root).resolve().parent
    digest = hashlib.sha256()
    for path in package_sources(script, package_root, exclude):
        name = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        digest.update(str(name).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
