"""Tests of the shared machinery: atomic file output (wsss.atomic) and RNG-state checkpoints (wsss.checkpoints)."""

from __future__ import annotations

import errno
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.workflow_helpers import datasets_of
from wsss import h5store
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
from wsss.atomic import torch_save_atomic, write_text_atomic
from wsss.datasets import write_manifest
from wsss.tables import write_metrics
from wsss.masks_png import save_label_png

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of dying, like a full disk reports ENOSPC
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
folder = sys.argv[1]
rng = np.random.default_rng(0)


def hdf5():
    with h5store.write_stage(f"{folder}/shard.h5", "cams", {}) as handle:
        h5store.put_image(handle, "x", {"cam": rng.random((300, 300))}, compression=None)


def crf_shard():
    # many images of gzip datasets: the HDF5 library reports a failed chunk write only while freeing
    # its objects (where Python ignores it), then crashes at close, unless the file is built in memory
    with h5store.write_stage(f"{folder}/crf.h5", "crf", {}) as handle:
        for index in range(20):
            h5store.put_image(handle, f"img{index}", {"cam": rng.random((3, 64, 64)).astype(np.float32)})


def nested():
    # the CLIP-ES GradCAM step writes its CAMs and its affinity together; the affinity overflows
    with h5store.write_stage(f"{folder}/cams.h5", "gradcam", {}) as cams, \
            h5store.write_stage(f"{folder}/affinity.h5", "affinity", {}) as affinity:
        h5store.put_image(cams, "x", {"cam": np.zeros((4, 4), np.float32)})
        h5store.put_image(affinity, "x", {"attention": rng.random((300, 300)).astype(np.float32)})


writers = {
    "shard.h5": hdf5,
    "crf.h5": crf_shard,
    "affinity.h5": nested,
    "metrics.csv": lambda: write_metrics(f"{folder}/metrics.csv", [
        {"method": "m", "stage": str(i), "split": "train", "metric": "miou", "value": float(i)} for i in range(9000)]),
    "manifest.json": lambda: write_text_atomic(f"{folder}/manifest.json", "x" * 200_000),
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

# room again: the rerun writes the whole shard
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
rng = np.random.default_rng(0)
folder = sys.argv[2]
crf_shard()
"""


def test_a_full_disk_gives_a_clear_error_and_no_file(tmp_path):
    """Each writer of the package, out of room (a file-size limit stands in for a full disk)."""
    full, rerun = tmp_path / "full", tmp_path / "rerun"
    full.mkdir()
    result = subprocess.run([sys.executable, "-c", _DISK_FULL_WRITER, str(full), str(rerun)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert result.returncode == 0 and "Segmentation" not in result.stderr
    for name in ("shard.h5", "crf.h5", "affinity.h5", "metrics.csv", "manifest.json", "model.pt", "manifest.tsv",
                 "mask.png"):
        assert lines[name].startswith("27 "), f"{name}: {lines[name]}"
        assert f"cannot write {full / name}: File too large (nothing was written under that name)" in lines[name]
    assert list(full.iterdir()) == [], "neither a final file nor a temporary one may be left"
    # after the failure, with room again, the shard equals one written without interruption
    rng = np.random.default_rng(0)
    with h5store.write_stage(tmp_path / "uninterrupted.h5", "crf", {}) as handle:
        for index in range(20):
            h5store.put_image(handle, f"img{index}", {"cam": rng.random((3, 64, 64)).astype(np.float32)})
    expected, got = datasets_of(tmp_path / "uninterrupted.h5"), datasets_of(rerun / "crf.h5")
    assert expected.keys() == got.keys() and all(np.array_equal(expected[k], got[k]) for k in expected)


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


def test_an_outer_writer_passes_on_the_error_of_the_inner_file_it_names(tmp_path):
    with pytest.raises(OSError, match=r"cannot write .*inner\.bin: No space left on device") as caught:
        with atomic_output(tmp_path / "outer.bin") as outer, atomic_output(tmp_path / "inner.bin") as inner:
            outer.write_bytes(b"done")
            inner.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "outer.bin" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
