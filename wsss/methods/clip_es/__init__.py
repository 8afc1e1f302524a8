"""CLIP-ES (CVPR 2023) as a method kind: softmax-GradCAM per shard, then class-aware attention affinity.

``gradcam`` writes the initial CAMs and the attention affinity input; ``caa`` refines the CAMs and
writes the method contract shard (``cam`` = refined, ``cam_initial`` = GradCAM). Each step is its own
module, so that editing one step's code reruns only its rule.
"""

from __future__ import annotations

from typing import Any

# The official implementation's settings (VOC); an instance states only what differs.
DEFAULTS: dict[str, Any] = {
    "kind": "clip_es",
    "segmenter": True,
    "text": {
        "template": "a clean origami {}.",
        "candidates": ["a clean origami {}.", "a photo of a {}.", "a rendering of a weird {}.", "a photo of the {}."],
    },
    "cam": {"score": "softmax", "use_background": True, "attn_layers": [-8, None], "input_scale": 1,
            "precision": "faithful", "batch_size": 1},
    "caa": {
        "enabled": True,
        "sinkhorn_rounds": 3,
        "power": 2,
        "box_threshold": 0.4,  # COCO: 0.7
        "box_border": "faithful",
        "empty_box": "zeros",
        "keep_affinity": False,
    },
    # CRF parameters left out take the mode's published values (wsss/crf.py); the threshold null takes the mode's rule
    "pseudo_masks": {"crf": {"mode": "prob_unary"}, "confidence_threshold": None},
}
