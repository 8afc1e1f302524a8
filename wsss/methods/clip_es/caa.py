"""CLIP-ES step 2: class-aware attention affinity (CAA) refinement; writes the method contract shard."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss import cam_shards
from wsss.clip.affinity import refine_cams, sinkhorn_affinity
from wsss.h5store import get_image, image_ids, open_stage, set_image_order, skipped_images, write_stage

log = logging.getLogger(__name__)


def run_caa(
    gradcam_path: str | Path,
    affinity_path: str | Path,
    caa: Mapping[str, Any],
    out_path: str | Path,
    locking: Any = None,
) -> None:
    """Refine one shard's CAMs with class-aware attention affinity and write the method contract shard."""
    empty_total = 0
    with open_stage(gradcam_path, locking) as cams, open_stage(affinity_path, locking) as affinity, \
            write_stage(out_path, cam_shards.STAGE, dict(caa), inputs=[gradcam_path, affinity_path],
                        locking=locking, skipped=skipped_images(cams)) as out:
        ids = image_ids(cams)
        for image_id in ids:
            stored = get_image(cams, image_id)
            initial = torch.from_numpy(stored["cam"])
            if caa["enabled"]:
                matrix = sinkhorn_affinity(torch.from_numpy(affinity[image_id]["attention"][()]),
                                           rounds=caa["sinkhorn_rounds"])
                refined, empty = refine_cams(initial, matrix, power=caa["power"], threshold=caa["box_threshold"],
                                             border=caa["box_border"], empty_box=caa["empty_box"], return_empty=True)
            else:
                refined, empty = initial, np.zeros(len(initial), bool)
            empty_total += int(np.sum(empty))
            cam_shards.put_cams(out, image_id, stored["keys"],
                                {"cam": refined.numpy(), "cam_initial": stored["cam"]},
                                (stored["height"], stored["width"]), {"empty_boxes": int(np.sum(empty))})
        set_image_order(out, ids)
    log.info("CAA on %d images; %d class maps had no box (empty_box=%s)", len(ids), empty_total, caa["empty_box"])
