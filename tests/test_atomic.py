"""Tests of the shared machinery: atomic file output (wsss.atomic) and RNG-state checkpoints (wsss.checkpoints)."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from wsss.atomic import atomic_output, torch_save_atomic, write_text_atomic
from wsss.checkpoints import rng_state, save_checkpoint, set_rng_state
from wsss.devices import default_device


def test_atomic_output_publishes_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.txt.tmp-")
        tmp.write_text("hello")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_text() == "hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_output_leaves_nothing_on_failure(tmp_path, error):
    target = tmp_path / "out.txt"
    with pytest.raises(error):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise error("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(ValueError):
        with atomic_output(target) as tmp:
            tmp.write_text("new")
            raise ValueError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_text_atomic_is_utf8(tmp_path):
    write_text_atomic(tmp_path / "a" / "t.md", "| – |\n")
    assert (tmp_path / "a" / "t.md").read_bytes() == "| – |\n".encode("utf-8")


def test_torch_save_atomic_round_trip(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "n": 3}
    torch_save_atomic(obj, tmp_path / "x.pt")
    save_checkpoint(obj, tmp_path / "y.pt")
    for name in ("x.pt", "y.pt"):
        back = torch.load(tmp_path / name, weights_only=True)
        assert back["n"] == 3 and torch.equal(back["w"], obj["w"])
    assert (tmp_path / "x.pt").read_bytes() == (tmp_path / "y.pt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt", "y.pt"]


def test_atomic_module_does_not_import_torch():
    code = "import sys, wsss.atomic, wsss.digests; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _draws() -> tuple:
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    _draws()
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    _draws()  # move every generator on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert _draws() == expected


def test_default_device():
    assert default_device("cpu") == torch.device("cpu")
    assert default_device(torch.device("cpu")) == torch.device("cpu")
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
