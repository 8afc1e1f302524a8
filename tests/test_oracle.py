"""gt_select: the background threshold chosen on ground truth, the release's sweep with its early stop."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image

from wsss.cam_shards import put_cams
from wsss.h5store import set_image_order, write_stage
from wsss.oracle import read_threshold
from wsss.stages.evaluate import ORACLE_THRESHOLDS, select_threshold


def _world(tmp_path, ramp_top: float):
    """One image whose class-0 CAM is a left-to-right ramp; the object covers the right 45 % of the ground truth."""
    height, width = 8, 100
    cam = np.tile(np.linspace(0.0, ramp_top, width, dtype=np.float32), (height, 1))[None]
    gt = np.zeros((height, width), np.uint8)
    gt[:, 55:] = 1
    Image.fromarray(gt, mode="L").save(tmp_path / "gt.png")
    manifest = tmp_path / "train.tsv"
    pd.DataFrame([{"image_id": "a", "image_path": "unused.png", "height": height, "width": width, "labels": "0",
                   "gt_path": str(tmp_path / "gt.png"), "skip_reason": ""}]).to_csv(manifest, sep="\t", index=False)
    shard = tmp_path / "cams.h5"
    with write_stage(shard, "cams", {}) as out:
        put_cams(out, "a", np.array([0]), {"cam": cam}, (height, width))
        set_image_order(out, ["a"])
    return shard, manifest


def test_the_sweep_picks_the_threshold_at_the_object_border(tmp_path):
    shard, manifest = _world(tmp_path, ramp_top=1.0)
    out = tmp_path / "oracle.json"
    chosen = select_threshold([shard], [manifest], {"kind": "demo"}, out)
    # the ramp crosses the object's left edge (x = 55 of 100) at about 0.55
    assert chosen == read_threshold(out) and 0.54 <= chosen <= 0.56
    record = json.loads(out.read_text())
    assert record["oracle"] is True and record["splits"] == ["train"]
    assert len(record["miou_by_threshold"]) < len(ORACLE_THRESHOLDS), "the sweep stops after the first drop"
