"""wsss-verify on a run folder that was copied elsewhere: the exports' image links are not results."""

from __future__ import annotations

import json
import shutil

from wsss.provenance import main, verify, write_run_manifest


def _run_with_exports(root, linked_folder: bool):
    """A run folder with one result and an export whose JPEGImages links to a dataset outside the run."""
    images = root / "dataset" / "JPEGImages"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"jpeg")
    run = root / "results" / "run"
    export = run / "m" / "pseudo_masks" / "train"
    export.mkdir(parents=True)
    (export / "list.txt").write_text("/JPEGImages/a.jpg /SegmentationClassPseudo/a.png\n")
    if linked_folder:  # one image folder: JPEGImages is a link to it
        (export / "JPEGImages").symlink_to("../../../../../dataset/JPEGImages", target_is_directory=True)
    else:  # images from several folders: a folder of links
        (export / "JPEGImages").mkdir()
        (export / "JPEGImages" / "a.jpg").symlink_to("../../../../../../dataset/JPEGImages/a.jpg")
    assert (export / "JPEGImages" / "a.jpg").read_bytes() == b"jpeg"
    write_run_manifest(run, {"run": "run"}, {}, [], root, run / "manifest.json")
    return run


def test_links_are_not_outputs_and_a_copied_run_verifies(tmp_path, capsys):
    for linked_folder in (True, False):
        root = tmp_path / str(linked_folder)
        run = _run_with_exports(root, linked_folder)
        assert set(json.loads((run / "manifest.json").read_text())["outputs"]) == {"m/pseudo_masks/train/list.txt"}
        assert verify(run / "manifest.json") == []
        published = tmp_path / f"published_{linked_folder}"
        shutil.copytree(run, published, symlinks=True)  # as cp -a: the relative links now dangle
        assert not (published / "m" / "pseudo_masks" / "train" / "JPEGImages" / "a.jpg").exists()
        assert verify(published / "manifest.json") == []
        assert main([str(published / "manifest.json")]) == 0
        out = capsys.readouterr().out
        assert "all 1 outputs" in out and "note: 1 image link(s) do not resolve here" in out
        # a result that changed is still found
        (published / "m" / "pseudo_masks" / "train" / "list.txt").write_text("changed\n")
        assert main([str(published / "manifest.json")]) == 1
