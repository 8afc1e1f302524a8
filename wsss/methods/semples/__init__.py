"""SemPLeS (WACV 2025) as a method kind: a WeakTr mask generator trained against a frozen CLIP critic.

Steps, one module each (``docs/semples.md`` describes them and where they follow the release):

- ``weaktr``: the mask generator (ViT with one class token per class, adaptive attention fusion,
  conv CAM head, patch-affinity refinement) and its phase-1 classification losses;
- ``prompts`` and ``losses``: learned background prompts in CLIP's text encoder, soft masks and the
  three stage losses;
- ``data``: training images and their augmentations;
- ``train``: phase 1 and stages a (match), b (prompts) and c (refine), resumable after a kill;
- ``cams``: multi-scale + flip inference into the method contract's CAM shards.

Training stages are shared between instances whose settings up to that stage are equal: their
folders are keyed by a digest of those settings (``stage_keys``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from wsss.digests import params_digest
from wsss.methods.semples.class_names import BY_DATASET, COCO_CLASS_SLOTS, COCO_SLOTS

# The released code's VOC settings (spec §2, §5, §6, §7); an instance states only what differs.
# lr is the release's --lr argument: the optimiser runs at lr * batch_size / 512 (spec §5.4).
DEFAULTS: dict[str, Any] = {
    "kind": "semples",
    "segmenter": True,
    "seed": 504,
    # faithful: the release's arithmetic on the device it runs on. On CUDA that is fp16 autocast with a
    # GradScaler in training, the critic's similarities computed and clamped in fp16 (0.9999 rounds to 1),
    # and the CAM forward under fp16 autocast; on the CPU it is fp32. fp32: fp32 everywhere.
    "precision": "faithful",
    "num_workers": 8,  # data-loader processes of the training stages
    # The mask generator: DeiT-S geometry, initialised from a local DeiT-S ImageNet-1k checkpoint
    # (deit_small_patch16_224-cd65a155.pth), never downloaded. init critic starts from the critic CLIP's
    # image tower instead (its geometry, pre_norm true, norm_eps 1e-5); scratch from random weights.
    "weaktr": {
        "init": "deit",  # deit | critic | scratch
        "checkpoint": None,
        "sha256": None,
        "image_size": 224,
        "patch_size": 16,
        "width": 384,
        "depth": 12,
        "heads": 6,
        "mlp_ratio": 4.0,
        "drop_path": 0.1,
        "aaf_pool": "max",  # COCO: avg
        "aaf_reduction": 8,  # COCO: 4
        "pre_norm": False,
        "norm_eps": 1.0e-6,
        # release: the release's class tokens, one per class but 90 on COCO (one per raw category slot, the
        # 10 empty ones included; they take part in every attention softmax), so its COCO checkpoint loads;
        # per_class: one token per dataset class.
        "class_tokens": "release",
    },
    # WeakTr phase 1 on image-level labels. `checkpoint` (a local file, checked against `sha256` when given)
    # skips it: stages a and c start from that model instead, e.g. the release's WeakTr_CAM_Generation.pth
    # (VOC) or WeakTr_CAM_Generation_COCO.pth; its weaktr geometry must match the file.
    "phase1": {
        "checkpoint": None,
        "sha256": None,
        "epochs": 60,
        "batch_size": 64,
        "lr": 6.0e-4,  # COCO: 5e-4
        "min_lr": 1.0e-5,
        "warmup_epochs": 5,
        "warmup_lr": 1.0e-6,
        "weight_decay": 0.03,  # COCO: 0.05
    },
    # The frozen CLIP critic: ViT-B/32 (open_clip tag or local weights), or "demo" for the pipeline's demo CLIP.
    "critic": {"model": "ViT-B-32-quickgelu", "pretrained": "openai", "sha256": None, "precision": "fp16"},
    # Class text t_k = CLIP("a photo of {name}."); null names take the dataset's SemPLeS list.
    "text": {"template": "a photo of {}.", "class_names": None},
    # Training images: timm's ImageNet training transform (RandAugment, random erasing) in stages a/c and
    # phase 1; stage b uses the random resized crop and flip only.
    "augment": {
        "crop_size": 224,
        "crop_scale": [0.08, 1.0],
        "randaugment": "rand-m9-mstd0.5-inc1",
        "random_erasing": 0.25,
    },
    "match": {"epochs": 60, "batch_size": 64, "lr": 5.12e-4, "weight_decay": 0.03, "lambda1": 2.4, "mask_eps": 0.1},
    # Stage b; enabled false is the stage-a-only ablation (CAMs from the stage-a model, no stages b and c).
    "prompts": {
        "enabled": True,
        "length": 30,
        "init": "uniform",  # uniform (the release, U[0,1)) | normal (CoOp, N(0, 0.02))
        "epochs": 60,
        "batch_size": 128,
        "lr": 0.1,
        "weight_decay": 0.03,
        "lambda2": 0.02,
        "mask_eps": 1.0e-4,
    },
    # Stage c restarts from the phase-1 model (spec §5.3), with the stage-b prompts frozen.
    "refine": {"epochs": 60, "batch_size": 64, "lr": 5.12e-4, "weight_decay": 0.03, "lambda3": 0.05, "mask_eps": 0.1},
    "cam": {"scales": [1.0, 1.2], "flip": True},  # COCO: [1.0, 0.8, 1.2]
    # Label-free by default: the last epoch of every stage and a fixed background threshold. gt_select true
    # picks the threshold on the ground truth of the cam_eval split; its table rows are marked oracle.
    "gt_select": False,
    # WeakTr's recipe: seeds argmax([t, cams]) with t 0.43 (COCO 0.42), label-unary CRF with SemPLeS's VOC
    # kernels (crf.preset semples_coco for WeakTr's COCO set), every pixel labelled.
    "pseudo_masks": {
        "crf": {"mode": "label_unary", "bg_threshold": 0.43, "faithful_upsample": False},
        "confidence_threshold": None,
    },
}

# Which settings each training stage reads. Its folder key digests these (minus the run-time knob
# num_workers) and the key of the stage it starts from, so equal prefixes share one trained model, and
# its rule gets only these as params, so changing a later stage's setting reruns nothing before it.
_RUNTIME = ("seed", "precision", "num_workers", "augment")
_STAGE_SECTIONS = {
    "phase1": _RUNTIME + ("weaktr", "phase1"),
    "match": _RUNTIME + ("critic", "text", "match"),
    "prompts": _RUNTIME + ("critic", "text", "prompts"),
    # stage c adds its term to stage a's loss, so it reads stage a's lambda1
    "refine": _RUNTIME + ("critic", "text", "match", "refine"),
}


def stage_settings(method: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The sections of an instance's settings that one training stage reads."""
    sections = _STAGE_SECTIONS[stage]
    if stage == "phase1" and method["weaktr"]["init"] == "critic":
        sections += ("critic",)  # phase 1 starts from the critic's image tower
    return {s: method[s] for s in sections}


def imported_phase1(method: Mapping[str, Any]) -> str | None:
    """The phase-1 model file an instance starts from instead of training phase 1, if it names one."""
    return method["phase1"]["checkpoint"]


def stage_keys(method: Mapping[str, Any], data: Mapping[str, Any], phase1_digest: str | None = None) -> dict[str, str]:
    """12-hex folder keys of an instance's training stages; ``data`` is what names its training images.

    An imported phase-1 model (``phase1.checkpoint``) is keyed by its file's SHA-256, ``phase1_digest``,
    and the geometry it is loaded into, never by its path: a moved or renamed copy reruns nothing.
    """

    def own(stage):
        return {k: v for k, v in stage_settings(method, stage).items() if k != "num_workers"}

    if imported_phase1(method):
        if not phase1_digest:
            raise ValueError("stage_keys: phase1.checkpoint is set, so its file's sha256 (phase1_digest) is needed")
        tokens = method["weaktr"]["class_tokens"]
        phase1 = _key({"data": dict(data), "imported": phase1_digest, "weaktr": weaktr_geometry(method),
                       "class_tokens": tokens})
    else:
        phase1 = _key({"data": dict(data), **own("phase1")})
    match = _key({"from": phase1, **own("match")})
    keys = {"phase1": phase1, "match": match}
    if method["prompts"]["enabled"]:
        keys["prompts"] = _key({"from": match, **own("prompts")})
        # stage c restarts from phase 1 and reads the prompts
        keys["refine"] = _key({"from": keys["prompts"], "start": phase1, **own("refine")})
    return keys


def weaktr_geometry(method: Mapping[str, Any]) -> dict[str, Any]:
    """The mask generator's shape from the ``weaktr`` section (without where its weights come from)."""
    return {k: v for k, v in method["weaktr"].items() if k not in ("init", "checkpoint", "sha256", "class_tokens")}


def generator_config(method: Mapping[str, Any], dataset_kind: str, classes: Sequence[str]) -> dict[str, Any]:
    """``WeakTrConfig`` fields of an instance's mask generator: its geometry and its class tokens."""
    return {**weaktr_geometry(method), **class_tokens(method, dataset_kind, classes)}


def imported_generator(method: Mapping[str, Any], dataset_kind: str, classes: Sequence[str]) -> dict[str, Any] | None:
    """What stages a and c load an imported phase-1 model into (``generator_config``); None when phase 1 is trained."""
    return generator_config(method, dataset_kind, classes) if imported_phase1(method) else None


def class_tokens(method: Mapping[str, Any], dataset_kind: str, classes: Sequence[str]) -> dict[str, Any]:
    """WeakTr's class tokens: their number and the token of each dataset class (``class_slots``, None: in order)."""
    if method["weaktr"]["class_tokens"] == "release" and dataset_kind == "coco":
        if len(classes) != len(COCO_CLASS_SLOTS):
            raise ValueError(f"weaktr.class_tokens 'release' puts COCO's {len(COCO_CLASS_SLOTS)} classes in the "
                             f"release's {len(COCO_SLOTS)} slots; this dataset has {len(classes)} classes")
        return {"num_classes": len(COCO_SLOTS), "class_slots": list(COCO_CLASS_SLOTS)}
    return {"num_classes": len(classes), "class_slots": None}


def class_names(method: Mapping[str, Any], dataset_kind: str, classes: Sequence[str]) -> list[str]:
    """The names in the class text: the instance's ``text.class_names``, else SemPLeS's list for VOC/COCO."""
    names = method["text"]["class_names"]
    if names is None:
        names = BY_DATASET.get(dataset_kind, classes)
    if len(names) != len(classes):
        raise ValueError(f"text.class_names has {len(names)} names for the dataset's {len(classes)} classes")
    return list(names)


def final_stage(method: Mapping[str, Any]) -> str:
    """The training stage whose model makes the instance's CAMs."""
    return "refine" if method["prompts"]["enabled"] else "match"


def _key(settings: Mapping[str, Any]) -> str:
    return params_digest(dict(settings))[:12]
