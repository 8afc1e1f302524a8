import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from wsss import h5store


def test_write_then_read_round_trip_with_provenance(tmp_path):
    source = tmp_path / "input.tsv"
    source.write_text("a\tb\n")
    path = tmp_path / "cams" / "00000.h5"
    with h5store.write_stage(path, "cams", {"b": 2, "a": [1, 2]}, inputs=[source]) as handle:
        h5store.put_image(handle, "img_1", {"cam": np.ones((2, 3, 4), np.float32), "keys": np.array([3, 7])},
                          {"height": 48, "width": 64})
        h5store.set_image_order(handle, ["img_1"])
    info = h5store.provenance(path)
    assert info["stage"] == "cams"
    assert info["params_digest"] == h5store.params_digest({"a": [1, 2], "b": 2})
    assert json.loads(info["input_digests"]) == {str(source): h5store.file_digest(source)}
    assert info["wsss_version"]
    assert "torch" in json.loads(info["environment"])
    with h5store.open_stage(path) as handle:
        assert h5store.image_ids(handle) == ["img_1"]
        stored = h5store.get_image(handle, "img_1")
        assert stored["cam"].shape == (2, 3, 4) and stored["cam"].dtype == np.float32
        assert stored["keys"].tolist() == [3, 7]
        assert stored["height"] == 48 and stored["width"] == 64
        with pytest.raises(KeyError, match="img_2"):
            h5store.get_image(handle, "img_2")


def test_params_digest_ignores_key_order():
    assert h5store.params_digest({"a": 1, "b": {"c": 2, "d": 3}}) == h5store.params_digest({"b": {"d": 3, "c": 2}, "a": 1})
    assert h5store.params_digest({"a": 1}) != h5store.params_digest({"a": 2})


def test_failure_inside_block_leaves_no_file(tmp_path):
    path = tmp_path / "00000.h5"
    with pytest.raises(RuntimeError):
        with h5store.write_stage(path, "cams", {}) as handle:
            h5store.put_image(handle, "x", {"cam": np.zeros((4, 4))})
            raise RuntimeError("simulated crash")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_readable_output(tmp_path):
    path = tmp_path / "00000.h5"
    script = textwrap.dedent(f"""
        import os, numpy as np
        from wsss import h5store
        with h5store.write_stage({str(path)!r}, "cams", {{}}) as handle:
            h5store.put_image(handle, "x", {{"cam": np.zeros((64, 64))}})
            handle.flush()
            os.kill(os.getpid(), 9)
    """)
    result = subprocess.run([sys.executable, "-c", script])
    assert result.returncode == -9
    assert not path.exists()
    with pytest.raises(FileNotFoundError, match="00000.h5"):
        h5store.open_stage(path)
    # the killed writer's temporary file is left; the next writer of that shard removes it
    leftovers = list(tmp_path.glob(".00000.h5.tmp-*"))
    assert len(leftovers) == 1
    with h5store.write_stage(path, "cams", {}) as handle:
        h5store.put_image(handle, "x", {"cam": np.ones((2, 2))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.h5"]


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("schema_version", 99, "schema_version is 99; this wsss reads 1..1"),
        ("schema_version", "one", "schema_version is 'one'"),
        ("params_json", "{not json", "params_json is not valid JSON"),
        ("input_digests", "[1, 2]", "input_digests must be a JSON dict, got list"),
        ("image_order", '["x", "ghost"]', "image_order names 'ghost', which is not an image group"),
        ("skipped_json", '{"y": 3}', "skipped_json must map image ids to reasons"),
    ],
)
def test_provenance_attributes_are_validated_on_read(tmp_path, attribute, value, message):
    path = tmp_path / "00000.h5"
    with h5store.write_stage(path, "cams", {}) as handle:
        h5store.put_image(handle, "x", {"cam": np.zeros((2, 2))})
        h5store.set_image_order(handle, ["x"])
    with h5py.File(path, "a") as handle:
        handle.attrs[attribute] = value
    with pytest.raises(ValueError, match=f"00000.h5: attribute {message}".replace("(", r"\(").replace("[", r"\[")):
        h5store.open_stage(path)


def test_open_stage_rejects_foreign_hdf5(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = 1
    with pytest.raises(ValueError, match="not a wsss stage file"):
        h5store.open_stage(path)


def test_bad_image_id_and_locking_value(tmp_path):
    with h5store.write_stage(tmp_path / "a.h5", "s", {}) as handle:
        with pytest.raises(ValueError, match="a/b"):
            h5store.put_image(handle, "a/b", {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="hdf5.locking"):
        h5store.normalise_locking("sometimes")
    assert h5store.normalise_locking("best-effort") == "best-effort"


def test_reading_without_locks(tmp_path):
    path = tmp_path / "a.h5"
    with h5store.write_stage(path, "s", {}, locking=False) as handle:
        h5store.put_image(handle, "a", {"x": np.arange(100)})
    with h5store.open_stage(path, locking=False) as handle:
        assert h5store.get_image(handle, "a")["x"].sum() == 4950
