"""Bad dataset files are caught by the manifest rule, named by file, line and id, before any CLIP or CAM job."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.workflow_helpers import planned_jobs, snakemake
from wsss.cpu_features import native_bf16
from wsss.datasets import BAD_FILE_PREFIX, DatasetError, read_manifest, usable_rows
from wsss.h5store import open_stage, skipped_images, write_stage
from wsss.stages.data import write_split_manifest
from wsss.tables import image_counts
from wsss.method_kinds import resolve_methods
from wsss.workflow_support import ConfigError, count_images, method_warnings

CLASSES = ["cat", "dog"]


def _image(path, height=12, width=16, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


def _mask(path, height=12, width=16, value=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), value, np.uint8)).save(path)


def _dataset(root, rows: list[str], gt: dict[str, dict] | None = None) -> dict:
    """A custom dataset: good.jpg plus whatever the test writes; GT masks as given (id -> _mask kwargs)."""
    _image(root / "images" / "good.jpg")
    _mask(root / "masks" / "good.png")
    for image_id, kwargs in (gt or {}).items():
        _mask(root / "masks" / f"{image_id}.png", **kwargs)
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "train.csv").write_text("image,labels\n" + "".join(f"{row}\n" for row in rows))
    return {"kind": "custom", "class_list": str(root / "classes.txt"),
            "splits": {"train": {"images": str(root / "images"), "csv": str(root / "train.csv"),
                                 "gt_dir": str(root / "masks")}}}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write(dataset, out, rows, **options):
    write_split_manifest(dataset, "train", out, "skip", rows, **options)


def test_every_bad_file_is_named_with_csv_line_and_id(tmp_path):
    root = tmp_path / "data"
    _image(root / "images" / "cut.jpg", 64, 64)
    _truncate(root / "images" / "cut.jpg")
    _image(root / "images" / "huge.png", 40, 50)
    _image(root / "images" / "small_gt.jpg")
    _image(root / "images" / "bad_values.jpg")
    (root / "images" / "text.png").write_text("not an image")
    dataset = _dataset(root, ["good.jpg,cat", "cut.jpg,cat", "huge.png,dog", "small_gt.jpg,dog", "bad_values.jpg,cat",
                              "text.png,dog"],
                       gt={"small_gt": {"height": 6, "width": 8}, "bad_values": {"value": 7}})
    out = tmp_path / "manifest.tsv"
    with pytest.raises(DatasetError) as raised:
        _write(dataset, out, 6, max_pixels=1000)
    message = str(raised.value)
    assert "5 of 6 images have unusable files" in message and "dataset.on_bad_image: skip" in message
    csv = root / "train.csv"
    assert f"{csv}:3: image 'cut':" in message and "cut.jpg: cannot decode image" in message
    assert f"{csv}:4: image 'huge':" in message and "50x40 = 2000 pixels, over dataset.max_pixels (1000)" in message
    assert f"{csv}:5: image 'small_gt':" in message and "ground truth is 8x6, its image" in message
    assert f"{csv}:6: image 'bad_values':" in message and "values [7] are outside the class range 0..2" in message
    assert f"{csv}:7: image 'text':" in message and "text.png: cannot decode image" in message
    assert "good" not in message.replace("ground", "")
    assert list(tmp_path.iterdir()) == [root], "nothing may be written when the check fails"


def test_skip_policy_records_the_reason_and_stages_leave_the_image_out(tmp_path):
    root = tmp_path / "data"
    _image(root / "images" / "cut.jpg", 64, 64)
    _truncate(root / "images" / "cut.jpg")
    _image(root / "images" / "plain.jpg")
    dataset = _dataset(root, ["good.jpg,cat", "cut.jpg,dog", "plain.jpg,"], gt={"plain": {}})
    out = tmp_path / "manifest.tsv"
    _write(dataset, out, 3, on_bad_image="skip")
    table = read_manifest(out)
    reasons = dict(zip(table["image_id"], table["skip_reason"]))
    assert reasons["good"] == "" and reasons["plain"] == "no labels"
    assert reasons["cut"].startswith(BAD_FILE_PREFIX) and "cut.jpg: cannot decode image" in reasons["cut"]
    assert image_counts(table) == {"images": 3, "used": 1, "skipped: no labels": 1, "skipped: bad files": 1}
    # CAM stages leave out both; prediction keeps the unlabelled image but never the broken one
    used, skipped = usable_rows(table)
    assert list(used["image_id"]) == ["good"] and set(skipped) == {"cut", "plain"}
    used, skipped = usable_rows(table, keep_unlabeled=True)
    assert list(used["image_id"]) == ["good", "plain"] and list(skipped) == ["cut"]
    # and the shard files record what they left out
    with write_stage(tmp_path / "shard.h5", "cams", {}, skipped=skipped):
        pass
    with open_stage(tmp_path / "shard.h5") as handle:
        assert skipped_images(handle) == {"cut": reasons["cut"]}


def test_a_split_without_usable_images_is_an_error(tmp_path):
    root = tmp_path / "data"
    _image(root / "images" / "cut.jpg", 64, 64)
    _truncate(root / "images" / "cut.jpg")
    dataset = _dataset(root, ["cut.jpg,dog"])
    with pytest.raises(DatasetError, match=r"every one of its 1 images is skipped \(first: 'cut'"):
        _write(dataset, tmp_path / "manifest.tsv", 1, on_bad_image="skip")
    assert not (tmp_path / "manifest.tsv").exists()
    # a CSV with a header and no rows fails when the workflow loads, naming the file
    empty = _dataset(tmp_path / "empty", [])
    with pytest.raises(ConfigError, match=r"split 'train' lists no images \(.*train.csv\)"):
        count_images({}, empty, "train")


def test_ids_the_export_would_reject_fail_in_the_manifest(tmp_path):
    root = tmp_path / "data"
    _image(root / "images" / "two words.jpg")
    dataset = _dataset(root, ["good.jpg,cat", "two words.jpg,dog"])
    with pytest.raises(DatasetError, match=r"train.csv:3: invalid image id 'two words' \(contains whitespace\)"):
        _write(dataset, tmp_path / "manifest.tsv", 2)


def test_the_manifest_rule_stops_the_run_before_any_clip_job(tmp_path):
    """Through the real workflow: a truncated image fails the manifest job; no CLIP job starts, nothing is left."""
    root = tmp_path / "data"
    _image(root / "images" / "second.jpg", 64, 64)
    _truncate(root / "images" / "second.jpg")
    dataset = _dataset(root, ["good.jpg,cat", "second.jpg,dog"], gt={"second": {"height": 64, "width": 64}})
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"never read: the run stops before any job loads it")
    config = {
        "run": "bad", "dataset": dataset, "shard_size": 4,
        "splits": {"pseudo": "train", "cam_eval": ["train"], "segmenter_eval": None},
        "clip": {"model": "ViT-B-16", "pretrained": str(weights), "precision": "fp32"},
        "methods": {"clip_es": {"kind": "clip_es", "text": {"template": "a photo of a {}.", "background_words": ["sky"]},
                                "segmenter": False}},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    plan = planned_jobs(snakemake(work, "-n", config=config_path))
    assert {"manifest", "text_features", "clip_es_gradcam"} <= set(plan)
    result = snakemake(work, "--cores", "2", config=config_path, check=False)
    assert result.returncode != 0
    log = (work / "results/bad/logs/manifest/train.log").read_text()
    assert f"{root / 'train.csv'}:3: image 'second':" in log and "second.jpg: cannot decode image" in log
    output = result.stdout + result.stderr
    assert "Error in rule manifest" in output
    started = {line.split()[-1].rstrip(":") for line in output.splitlines() if line.startswith(("rule ", "localrule "))}
    assert started == {"manifest"}, f"jobs other than the manifest started: {started}"
    leftovers = [p.relative_to(work) for p in (work / "results").rglob("*") if p.is_file() and "logs" not in p.parts]
    assert leftovers == [], f"files left behind: {leftovers}"


# --- bf16 on a CPU without bf16 arithmetic -----------------------------------------------------------


def test_native_bf16_is_read_from_the_cpu_flags():
    assert native_bf16("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16\n")
    assert native_bf16("processor : 0\nflags : fpu avx2 amx_bf16 amx_tile\n")
    assert native_bf16("processor : 0\nFeatures : fp asimd bf16 i8mm\n")  # Arm
    assert not native_bf16("processor : 0\nflags : fpu sse2 avx2 fma\n")  # AMD EPYC with AVX2 only
    assert not native_bf16("")


def test_bf16_cams_on_a_cpu_without_bf16_are_warned_about_naming_the_key():
    methods = resolve_methods({"fast": {"kind": "clip_es", "cam": {"precision": "bf16"}},
                               "plain": {"kind": "clip_es", "cam": {"precision": "fp32"}},
                               "semples": {"kind": "semples"}})
    warnings = method_warnings(methods, native_bf16=False)  # the capability check, faked
    assert len(warnings) == 1
    assert warnings[0].startswith("methods.fast.cam.precision: bf16 runs emulated on this CPU")
    assert "never faithful" in warnings[0]
    assert method_warnings(methods, native_bf16=True) == []


def test_the_workflow_prints_the_bf16_warning_before_any_job_on_such_a_cpu(tmp_path):
    # the tiny config's clip_es_logit runs bf16; whether this CPU has bf16 decides whether it is warned about
    result = snakemake(tmp_path, "-n")
    warned = "WARNING: methods.clip_es_logit.cam.precision: bf16 runs emulated" in result.stderr
    assert warned == (not native_bf16())
