"""ExCEL (Yang et al., CVPR 2025), training-free: class text enriched from an attribute bank (TSE), patch
features from CLIP Surgery-style self-correlation in the last blocks (SVC), feature-surgery patch-text
maps, and CLIP-ES's attention-affinity propagation with ExCEL's layer mix (docs/excel.md).

``DEFAULTS`` are the official code's VOC settings; every quirk of the reference is the default, with a
named switch for the clean alternative.
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    "kind": "excel",
    "segmenter": True,
    "text": {"template": "a clean origami {}."},
    "attributes": {
        "enabled": True,
        "descriptors": None,  # path to the descriptor JSON (class -> sentences); required on real data
        "sha256": None,
        "descriptor_prefix": None,  # e.g. "a clean origami {}. " for sentences without it
        "bank": {"source": "kmeans", "n_clusters": 112, "seed": 0, "n_init": 10, "path": None, "sha256": None},
        "keep_fraction": 0.9,
        "temperature": 1.0,  # faithful: the raw dot products
        "weight": 1.0,  # lambda
    },
    "cam": {
        "input_size": 320,
        "resize": "square",  # square | keep_aspect
        "normalization": "imagenet",  # imagenet | clip
        "precision": "fp32",
        "surgery_blocks": 5,  # the reference's `layers=6` replaces five blocks
        "head_reduce": "sum",  # sum | mean
        "feature_norm": "tokens",  # tokens | channels
        "batch_size": 1,
    },
    "caa": {
        "enabled": True,
        "attn_layers": [-6, None],
        "surgery_head_reduce": "sum",  # sum | mean
        "sinkhorn_rounds": 3,
        "power": 2,
        "box_threshold": 0.79,  # COCO: 0.88 (not confirmed for the training-free mode)
        "box_border": "faithful",
        "empty_box": "zeros",
    },
}
