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


_DISK_FULL_WRITER = """
import resource, signal, sys
import numpy as np, pandas as pd, torch
from wsss import h5store
from wsss.atomic import torch_save_atomic
from wsss.datasets import write_manifest
from wsss.masks_png import save_label_png

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of dying, like a full disk reports ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
folder = sys.argv[1]
rng = np.random.default_rng(0)


def hdf5():
    with h5store.write_stage(f"{folder}/shard.h5", "cams", {}) as handle:
        h5store.put_image(handle, "x", {"cam": rng.random((300, 300))}, compression=None)


writers = {
    "shard.h5": hdf5,
    "model.pt": lambda: torch_save_atomic({"w": torch.rand(300, 300)}, f"{folder}/model.pt"),
    "manifest.tsv": lambda: write_manifest(pd.DataFrame(rng.random((9000, 4))), f"{folder}/manifest.tsv"),
    "mask.png": lambda: save_label_png(f"{folder}/mask.png", rng.integers(0, 255, (600, 600), dtype=np.uint8)),
}
for name, write in writers.items():
    try:
        write()
        print(name, "WRITTEN")
    except OSError as error:
        print(name, error.errno, error)
"""


def test_a_full_disk_gives_a_clear_error_and_no_file(tmp_path):
    """Each writer of the package, out of room (a file-size limit stands in for a full disk)."""
    result = subprocess.run([sys.executable, "-c", _DISK_FULL_WRITER, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    for name in ("shard.h5", "model.pt", "manifest.tsv", "mask.png"):
        assert lines[name].startswith("27 "), f"{name}: {lines[name]}"
        assert f"cannot write {tmp_path / name}: File too large (nothing was written under that name)" in lines[name]
    assert list(tmp_path.iterdir()) == [], "neither a final file nor a temporary one may be left"


def test_stale_temporaries_of_a_path_are_removed_by_its_next_writer(tmp_path):
    target = tmp_path / "out.h5"
    (tmp_path / ".out.h5.tmp-4242").write_text("left by a killed writer")
    (tmp_path / ".out.h5.tmp-77").mkdir()  # a folder output's leftover
    (tmp_path / ".other.h5.tmp-4242").write_text("another output's writer: not ours to remove")
    write_text_atomic(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.h5.tmp-4242", "out.h5"]


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
