"""No pickle anywhere: every torch.load is weights-only, and nothing else unpickles (a source scan)."""

from __future__ import annotations

import ast

from tests.workflow_helpers import REPO

SOURCES = sorted(p for folder in ("wsss", "workflow_scripts", "benchmarks") for p in (REPO / folder).rglob("*.py"))
# OpenAI's TorchScript archive (clip.pretrained, a user-given path) is the one trusted input that is not
# a plain tensor file; README and docs/reliability.md say so.
TORCHSCRIPT_READERS = {"wsss/clip/factory.py"}
UNPICKLING_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def _dotted(node: ast.AST) -> str:
    """'torch.load' for the expression torch.load (attribute chains of names)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def unsafe_loads(source: str, path: str) -> list[str]:
    """Every unsafe deserialisation in a Python source, as 'path:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name and name.split(".")[0] in UNPICKLING_MODULES:
                    found.append(f"{path}:{node.lineno}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name.endswith("torch.load"):
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
        if name.endswith(("np.load", "numpy.load")):
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(f"{path}:{node.lineno}: np.load with allow_pickle")
        if name.endswith(("read_pickle", "to_pickle")):
            found.append(f"{path}:{node.lineno}: {name}")
        if name.endswith("jit.load") and path not in TORCHSCRIPT_READERS:
            found.append(f"{path}:{node.lineno}: torch.jit.load outside {sorted(TORCHSCRIPT_READERS)}")
    return found


def test_the_scan_finds_what_it_looks_for():
    bad = ("import pickle\nimport torch\nimport numpy as np\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\n"
           "z = np.load(p, allow_pickle=True)\nimport pandas as pd\nw = pd.read_pickle(p)\nv = torch.jit.load(p)\n")
    found = unsafe_loads(bad, "x.py")
    assert [line.split(": ", 1)[1] for line in found] == [
        "imports pickle", "torch.load without weights_only=True", "torch.load without weights_only=True",
        "np.load with allow_pickle", "pd.read_pickle", "torch.jit.load outside ['wsss/clip/factory.py']"]
    assert unsafe_loads("import torch\nx = torch.load(p, map_location='cpu', weights_only=True)\n", "x.py") == []


def test_no_unsafe_load_in_the_code():
    assert len(SOURCES) > 50
    found = [line for path in SOURCES for line in unsafe_loads(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []
