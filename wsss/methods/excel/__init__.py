"""ExCEL (Yang et al., CVPR 2025), training-free: class text enriched from an attribute bank (TSE), patch
features from CLIP Surgery-style self-correlation in the last blocks (SVC), feature-surgery patch-text
maps, and CLIP-ES's attention-affinity propagation with ExCEL's layer mix (docs/excel.md).

``DEFAULTS`` are the official code's VOC settings; every quirk of the reference is the default, with a
named switch for the clean alternative.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsss.digests import file_digest, params_digest

DEFAULTS: dict[str, Any] = {
    "kind": "excel",
    "segmenter": True,
    "text": {"template": "a clean origami {}.", "precision": "fp32"},  # the reference's fp32 text (not CLIP-ES's fp16)
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
    # masks: the dense CRF on the plain RGB image, float32 upsampling, no confidence rule (no 255 pixels);
    # refiner "par" gives the reference's seeds instead (PAR on the resized input, wsss/stages/par.py)
    "pseudo_masks": {"refiner": "crf",
                     "crf": {"mode": "prob_unary", "image_mode": "rgb", "faithful_upsample": False},
                     "par": {"iterations": 20, "dilations": [1, 2, 4, 8, 12, 24], "w_image": 0.3, "w_pos": 0.01,
                             "image": "resized_input", "input_size": 320},
                     "confidence_threshold": 0.0},
}

# The demo world's descriptor set, written for this project
DEMO_DESCRIPTORS = Path(__file__).resolve().parents[2] / "demo" / "descriptors.json"


def descriptor_file(name: str, method: Mapping[str, Any], dataset_kind: str) -> Path | None:
    """The descriptor JSON an instance clusters (None when it needs none), checked at parse time: the file must
    exist and match ``attributes.sha256`` where one is given."""
    attributes = method["attributes"]
    if not attributes["enabled"] or attributes["bank"]["source"] == "file":
        return None
    given = attributes.get("descriptors")
    if given is None:
        if dataset_kind != "demo":
            raise ValueError(f"methods.{name}.attributes.descriptors: the descriptor JSON (class -> sentences) is "
                             f"required for a {dataset_kind} dataset (docs/excel.md says where to get ExCEL's)")
        return DEMO_DESCRIPTORS
    path = Path(given)
    expected = attributes.get("sha256")
    if not path.is_file():
        wanted = f" (sha256 {expected})" if expected else ""
        raise ValueError(f"methods.{name}.attributes.descriptors: {path} not found{wanted}")
    if expected and file_digest(path) != expected:
        raise ValueError(f"methods.{name}.attributes.sha256: {path} has sha256 {file_digest(path)}, expected {expected}")
    return path


def bank_file(name: str, method: Mapping[str, Any]) -> Path | None:
    """ExCEL's released bank when ``attributes.bank.source`` is ``file``, checked at parse time."""
    bank = method["attributes"]["bank"]
    if not method["attributes"]["enabled"] or bank["source"] != "file":
        return None
    if not bank.get("path"):
        raise ValueError(f"methods.{name}.attributes.bank.path: bank.source 'file' needs the released bank (.pth)")
    path = Path(bank["path"])
    if not path.is_file():
        wanted = f" (sha256 {bank['sha256']})" if bank.get("sha256") else ""
        raise ValueError(f"methods.{name}.attributes.bank.path: {path} not found{wanted}")
    if bank.get("sha256") and file_digest(path) != bank["sha256"]:
        raise ValueError(f"methods.{name}.attributes.bank.sha256: {path} has sha256 {file_digest(path)}, "
                         f"expected {bank['sha256']}")
    return path


def bank_key(method: Mapping[str, Any], clip: Mapping[str, Any], classes: list[str],
             source: Path | None) -> str | None:
    """The cache key of an instance's attribute bank: the CLIP, the clustering and the source file's bytes
    (a moved copy keeps its key); None when attributes are off."""
    attributes = method["attributes"]
    if not attributes["enabled"]:
        return None
    bank = {key: value for key, value in attributes["bank"].items() if key != "path"}
    settings = {"clip": dict(clip), "bank": bank, "prefix": attributes.get("descriptor_prefix"),
                "classes": list(classes), "source": file_digest(source) if source else None}
    return params_digest(settings)[:12]


def enrichment_settings(method: Mapping[str, Any]) -> dict[str, Any]:
    """What the CAM step reads of ``attributes``: whether to enrich, and how (not where the bank came from)."""
    return {key: method["attributes"][key] for key in ("enabled", "keep_fraction", "temperature", "weight")}
