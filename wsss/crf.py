"""Dense CRF: CLIP-ES pseudo masks with confidence (probability unary) and SemPLeS label refinement (label unary).

CLIP-ES (spec §8): the refined CAMs are upsampled (cv2 bilinear, then float16 as the official
code stores them), a background row ``(1 - max_c cam)^alpha`` is put first, ``-log`` of the clipped
stack is the unary, and a DenseCRF2D with the deeplab-pytorch parameters gives Q. The label is
``[0, k1+1, ...][argmax Q]`` and the confidence ``max_c Q``; pixels below 0.95 become 255.

SemPLeS / WeakTr (SemPLeS spec §7): the seed label map ``argmax([t, cams])`` is refined by a CRF
whose unary comes from the labels themselves (``gt_prob`` 0.7); every pixel keeps a label.

All functions are pure and take arrays; only :func:`crf_many` touches files (through the pipeline's one
image decoder, :func:`wsss.images.decode_image`) and processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, TextIO

import cv2
import numpy as np
import pydensecrf.densecrf as dcrf
from wsss.images import ImageDecodeError, decode_image
from wsss.progress import progress

__all__ = [
    "BGR_MEAN",
    "CLIP_ES_PARAMS",
    "SEMPLES_COCO_PARAMS",
    "SEMPLES_VOC_PARAMS",
    "CrfConfig",
    "CrfParams",
    "crf_image",
    "crf_many",
    "crf_one_image",
    "dense_crf",
    "label_crf",
    "labels_and_confidence",
    "probability_stack",
    "seeds_from_cams",
    "training_labels",
    "unary_from_labels",
    "unary_from_probabilities",
    "upsample_cams",
    "wrap_to_uint8",
]

# deeplab-pytorch's ImageNet mean in BGR order; CLIP-ES subtracts it from the CRF image.
BGR_MEAN = (104.008, 116.669, 122.675)
IMAGE_MODES = ("wrapped_bgr_mean", "rgb")
CRF_MODES = ("prob_unary", "label_unary")
UNARY_CLIP = 1e-5  # pydensecrf's unary_from_softmax default
IGNORE_LABEL = 255

# Environment variables read by the usual native thread pools (OpenMP, OpenBLAS, MKL, numexpr).
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


# --------------------------------------------------------------------------------------------------
# Parameters


def _is_number(value: Any) -> bool:
    """True for real numbers (not bools)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class CrfParams:
    """Mean-field iterations and the two Potts pairwise kernels of a DenseCRF2D."""

    iters: int = 10
    gaussian_sxy: float = 1
    gaussian_compat: float = 3
    bilateral_sxy: float = 67
    bilateral_srgb: float = 3
    bilateral_compat: float = 4

    def __post_init__(self) -> None:
        if isinstance(self.iters, bool) or not isinstance(self.iters, (int, np.integer)) or self.iters < 1:
            raise ValueError(f"crf.iters must be a positive integer, got {self.iters!r}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ValueError(f"crf.{name} must be a positive number, got {value!r}")
        for name in ("gaussian_compat", "bilateral_compat"):
            value = getattr(self, name)
            if not _is_number(value) or not np.isfinite(value):
                raise ValueError(f"crf.{name} must be a finite number, got {value!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CrfParams:
        """Build from flat keys (``gaussian_sxy``) or the config's nested form (``gaussian: {sxy, compat}``)."""
        flat: dict[str, Any] = {}
        for key, value in d.items():
            if key in ("gaussian", "bilateral"):
                if not isinstance(value, Mapping):
                    raise ValueError(f"crf.{key} must be a mapping, got {value!r}")
                allowed = ("sxy", "compat") if key == "gaussian" else ("sxy", "srgb", "compat")
                for sub, sub_value in value.items():
                    if sub not in allowed:
                        raise ValueError(f"unknown CRF parameter crf.{key}.{sub} (allowed: {', '.join(allowed)})")
                    flat[f"{key}_{sub}"] = sub_value
            else:
                flat[key] = value
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - names)
        if unknown:
            raise ValueError(f"unknown CRF parameter(s) {unknown} (allowed: {sorted(names)})")
        return cls(**flat)


# CLIP-ES inherits the deeplab-pytorch CRF; SemPLeS/WeakTr use their own sets (SemPLeS spec §7).
CLIP_ES_PARAMS = CrfParams()
SEMPLES_VOC_PARAMS = CrfParams(
    iters=10, gaussian_sxy=4, gaussian_compat=3, bilateral_sxy=83, bilateral_srgb=5, bilateral_compat=3
)
SEMPLES_COCO_PARAMS = CrfParams(
    iters=10, gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=50, bilateral_srgb=5, bilateral_compat=10
)
_PRESETS = {"clip_es": CLIP_ES_PARAMS, "semples_voc": SEMPLES_VOC_PARAMS, "semples_coco": SEMPLES_COCO_PARAMS}
_PARAM_KEYS = {f.name for f in fields(CrfParams)} | {"gaussian", "bilateral"}


@dataclass(frozen=True)
class CrfConfig:
    """Everything the per-image CRF path needs; ``None`` fields take the mode's default.

    Defaults by mode: ``prob_unary`` (CLIP-ES) uses the wrapped BGR-mean image, the deeplab-pytorch
    parameters and confidence threshold 0.95; ``label_unary`` (SemPLeS) uses the plain RGB image,
    the SemPLeS VOC parameters and threshold 0.0 (SemPLeS has no 255 rule, and no confidence is
    below 0, so :func:`training_labels` leaves every pixel labelled).
    """

    mode: str = "prob_unary"
    image_mode: str | None = None
    alpha: float = 1.0
    faithful_upsample: bool = True
    params: CrfParams | None = None
    confidence: float | None = None
    gt_prob: float = 0.7
    bg_threshold: float = 0.43

    def __post_init__(self) -> None:
        if self.mode not in CRF_MODES:
            raise ValueError(f"crf.mode must be one of {CRF_MODES}, got {self.mode!r}")
        prob = self.mode == "prob_unary"
        if self.image_mode is None:
            object.__setattr__(self, "image_mode", "wrapped_bgr_mean" if prob else "rgb")
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"crf.image_mode must be one of {IMAGE_MODES}, got {self.image_mode!r}")
        if self.params is None:
            object.__setattr__(self, "params", CLIP_ES_PARAMS if prob else SEMPLES_VOC_PARAMS)
        if not isinstance(self.params, CrfParams):
            raise ValueError(f"crf.params must be a CrfParams, got {type(self.params).__name__}")
        if self.confidence is None:
            object.__setattr__(self, "confidence", 0.95 if prob else 0.0)
        for name in ("alpha", "confidence", "gt_prob", "bg_threshold"):
            value = getattr(self, name)
            if not _is_number(value) or not np.isfinite(value):
                raise ValueError(f"crf.{name} must be a finite number, got {value!r}")
        if not self.alpha > 0:
            raise ValueError(f"crf.alpha must be > 0, got {self.alpha!r}")
        if not 0 < self.gt_prob < 1:
            raise ValueError(f"crf.gt_prob must lie in (0, 1), got {self.gt_prob!r}")
        if not isinstance(self.faithful_upsample, (bool, np.bool_)):
            raise ValueError(f"crf.faithful_upsample must be a bool, got {self.faithful_upsample!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CrfConfig:
        """Build from the config's ``crf:`` section; CRF parameters may sit at top level or under ``params``.

        ``preset: clip_es | semples_voc | semples_coco`` picks a parameter set; explicit parameter
        keys override single fields of it. ``bg_alpha`` is accepted as a synonym of ``alpha``.
        """
        d = dict(d)
        if "bg_alpha" in d:
            if "alpha" in d:
                raise ValueError("give either crf.alpha or crf.bg_alpha, not both")
            d["alpha"] = d.pop("bg_alpha")
        preset = d.pop("preset", None)
        param_part = {k: d.pop(k) for k in list(d) if k in _PARAM_KEYS}
        nested = d.pop("params", None)
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise ValueError(f"crf.params must be a mapping, got {nested!r}")
            param_part = {**dict(nested), **param_part}
        names = {f.name for f in fields(cls)} - {"params"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown crf option(s) {unknown} (allowed: {sorted(names | _PARAM_KEYS | {'preset', 'params'})})"
            )
        base: CrfParams | None = None
        if preset is not None:
            if preset not in _PRESETS:
                raise ValueError(f"crf.preset must be one of {sorted(_PRESETS)}, got {preset!r}")
            base = _PRESETS[preset]
        if param_part:
            if base is None:
                base = CLIP_ES_PARAMS if d.get("mode", "prob_unary") == "prob_unary" else SEMPLES_VOC_PARAMS
            override = CrfParams.from_dict(param_part)
            given = _flat_param_names(param_part)
            base = CrfParams(
                **{f.name: getattr(override if f.name in given else base, f.name) for f in fields(CrfParams)}
            )
        return cls(params=base, **d)


def _flat_param_names(part: Mapping[str, Any]) -> set[str]:
    """Flat CrfParams field names that a (possibly nested) parameter mapping sets explicitly."""
    names = set()
    for key, value in part.items():
        if key in ("gaussian", "bilateral"):
            names |= {f"{key}_{sub}" for sub in value}
        else:
            names.add(key)
    return names


# --------------------------------------------------------------------------------------------------
# Images


def wrap_to_uint8(x: np.ndarray) -> np.ndarray:
    """Truncate toward zero and wrap modulo 256 (-5.5 -> 251, 300.2 -> 44), a portable C-style uint8 cast."""
    x = np.asarray(x)
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise ValueError("wrap_to_uint8: input contains NaN or infinity")
    # A direct float->uint8 cast of negative or large values is undefined behaviour in C and differs
    # between platforms; going through int64 and a Python-style modulo is exact everywhere.
    return (np.trunc(x).astype(np.int64) % 256).astype(np.uint8)


def _check_image(image_rgb: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an HxWx3 uint8 image."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"{what}: expected a uint8 HxWx3 image, got {image_rgb.dtype} {image_rgb.shape}")
    if image_rgb.shape[0] < 1 or image_rgb.shape[1] < 1:
        raise ValueError(f"{what}: empty image {image_rgb.shape}")
    return image_rgb


def crf_image(image_rgb: np.ndarray, mode: str = "wrapped_bgr_mean") -> np.ndarray:
    """The uint8 image the bilateral kernel sees: wrapped BGR minus mean (CLIP-ES, faithful) or plain RGB."""
    image_rgb = _check_image(image_rgb)
    if mode == "rgb":
        return np.ascontiguousarray(image_rgb)
    if mode != "wrapped_bgr_mean":
        raise ValueError(f"crf.image_mode must be one of {IMAGE_MODES}, got {mode!r}")
    # The result depends only on (channel, value), so a 3x256 table built with the official arithmetic
    # gives identical bytes far faster than transforming every pixel.
    table = _wrapped_mean_table()
    out = np.empty_like(image_rgb)
    for channel in range(3):  # output channel c (BGR order) comes from input channel 2 - c (RGB order)
        out[..., channel] = table[channel][image_rgb[..., 2 - channel]]
    return out


@lru_cache(maxsize=1)
def _wrapped_mean_table() -> np.ndarray:
    """(3, 256) uint8: wrap(float32(v) - mean_c) for every BGR channel c and value v, as deeplab-pytorch computes it."""
    values = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)  # (256, 3) like an image row
    # In-place float32 -= float64 tuple, as deeplab-pytorch does; then the wrapping uint8 cast.
    values -= np.asarray(BGR_MEAN)
    table = np.ascontiguousarray(wrap_to_uint8(values).T)
    table.flags.writeable = False
    return table


# --------------------------------------------------------------------------------------------------
# CAMs -> probabilities -> unary


def _check_cams(cams: np.ndarray) -> np.ndarray:
    """Validate a finite (K, h, w) CAM stack with K >= 1."""
    cams = np.asarray(cams)
    if cams.ndim != 3 or cams.shape[0] < 1 or cams.shape[1] < 1 or cams.shape[2] < 1:
        raise ValueError(f"cams: expected a non-empty (K, h, w) array, got shape {cams.shape}")
    if cams.dtype.kind != "f":
        raise ValueError(f"cams: expected a floating-point array, got {cams.dtype}")
    if not np.all(np.isfinite(cams)):
        raise ValueError("cams: contains NaN or infinity")
    return cams


def upsample_cams(cams: np.ndarray, size: tuple[int, int], faithful: bool = True) -> np.ndarray:
    """Resize (K, h, w) CAMs to (K, H, W) with cv2 bilinear, per class; float16 in faithful mode."""
    cams = _check_cams(cams)
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"upsample_cams: bad target size {size!r}")
    out = np.empty((cams.shape[0], height, width), dtype=np.float32)
    for k, cam in enumerate(cams):
        # cv2 wants (width, height); the official code resizes each class map on its own.
        out[k] = cv2.resize(
            np.ascontiguousarray(cam, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR
        )
    # The official CAM files hold float16 maps, and the CRF step computes on those: resize, fp16, CRF.
    return out.astype(np.float16) if faithful else out


def probability_stack(cams: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Prepend the background score (1 - max_c cam)^alpha to (K, H, W) CAMs; not renormalised, in the CAMs' dtype."""
    cams = _check_cams(cams)
    # Python scalars keep the array dtype (NEP 50), so a float16 stack stays float16 as in the
    # official code; np.power(x, 1.0) is exactly x.
    background = 1 - cams.max(axis=0, keepdims=True)
    if float(alpha) != 1.0:  # x ** 1 is x exactly; skipping it saves a slow float16 power
        background = np.power(background, float(alpha))
    return np.concatenate([background, cams], axis=0)


def unary_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """-log(clip(P, 1e-5, 1)) as a C-contiguous (C, H*W) float32 array (pydensecrf's unary_from_softmax)."""
    probs = np.asarray(probs)
    if probs.ndim < 2:
        raise ValueError(f"unary_from_probabilities: expected (C, ...) probabilities, got shape {probs.shape}")
    if probs.dtype.kind != "f":
        raise ValueError(f"unary_from_probabilities: expected floating-point probabilities, got {probs.dtype}")
    n_classes = probs.shape[0]
    # Clip and log in the input dtype (float16 for faithful CAMs), then cast: same order as pydensecrf.
    energy = np.clip(probs, UNARY_CLIP, 1.0)
    np.log(energy, out=energy)  # in place: the clipped copy is ours
    np.negative(energy, out=energy)
    return np.ascontiguousarray(energy.reshape(n_classes, -1).astype(np.float32))


def unary_from_labels(labels: np.ndarray, n_labels: int, gt_prob: float = 0.7) -> np.ndarray:
    """(n_labels, H*W) float32 unary from a label-index map: -log(gt_prob) at the label, -log((1-gt_prob)/(n-1)) elsewhere."""
    labels = np.asarray(labels).reshape(-1)
    if n_labels < 2:
        raise ValueError(f"unary_from_labels: need n_labels >= 2, got {n_labels}")
    if not 0 < gt_prob < 1:
        raise ValueError(f"unary_from_labels: gt_prob must lie in (0, 1), got {gt_prob}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(
            f"unary_from_labels: label indices must lie in [0, {n_labels}), got [{labels.min()}, {labels.max()}]"
        )
    # Same arithmetic as pydensecrf's unary_from_labels(..., zero_unsure=False): energies in float64,
    # stored as float32.
    other_energy = -np.log((1.0 - gt_prob) / (n_labels - 1))
    label_energy = -np.log(gt_prob)
    unary = np.full((n_labels, labels.size), other_energy, dtype=np.float32)
    unary[labels, np.arange(labels.size)] = label_energy
    return unary


# --------------------------------------------------------------------------------------------------
# CRF and label extraction


def dense_crf(image: np.ndarray, unary: np.ndarray, params: CrfParams = CLIP_ES_PARAMS) -> np.ndarray:
    """Mean-field DenseCRF2D (Gaussian + bilateral Potts kernels) on a uint8 HxWx3 image; returns Q (C, H, W) float32."""
    image = _check_image(image, "CRF image")
    height, width = image.shape[:2]
    unary = np.asarray(unary)
    if unary.ndim != 2 or unary.shape[1] != height * width or unary.shape[0] < 1:
        raise ValueError(
            f"dense_crf: unary shape {unary.shape} does not fit a {height}x{width} image (need (C, {height * width}))"
        )
    n_classes = unary.shape[0]
    crf = dcrf.DenseCRF2D(width, height, n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=params.bilateral_compat,
    )
    q = crf.inference(params.iters)
    # pydensecrf stores Q pixel-major; a C-contiguous copy makes the per-class reductions fast.
    return np.ascontiguousarray(np.asarray(q, dtype=np.float32).reshape(n_classes, height, width))


def _label_lookup(keys: Sequence[int] | np.ndarray) -> np.ndarray:
    """uint8 table [0, k1+1, ..., kK+1] mapping a CRF channel to its label value."""
    keys = np.asarray(keys)
    if keys.ndim != 1 or (keys.size and keys.dtype.kind not in "iu"):
        raise ValueError(f"keys: expected a 1-D integer array of 0-based class indices, got {keys.dtype} {keys.shape}")
    keys = keys.astype(np.int64)
    if keys.size and (keys.min() < 0 or keys.max() > 253):
        raise ValueError(f"keys: class indices must lie in [0, 253] (255 is the ignore label), got {keys.tolist()}")
    if np.unique(keys).size != keys.size:
        raise ValueError(f"keys: duplicate class indices {keys.tolist()}")
    return np.concatenate([[0], keys + 1]).astype(np.uint8)


def labels_and_confidence(q: np.ndarray, keys: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label map [0, k1+1, ...][argmax_c Q] (uint8) and confidence max_c Q (float16) from Q (K+1, H, W)."""
    q = np.asarray(q)
    lookup = _label_lookup(keys)
    if q.ndim != 3 or q.shape[0] != lookup.size:
        raise ValueError(
            f"labels_and_confidence: Q has shape {q.shape}, expected ({lookup.size}, H, W) for {lookup.size - 1} key(s)"
        )
    labels = lookup[np.argmax(q, axis=0)]
    confidence = q.max(axis=0).astype(np.float16)
    return labels, confidence


def training_labels(labels: np.ndarray, confidence: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """Labels with 255 exactly where confidence < threshold (CLIP-ES's confidence-guided ignore).

    The comparison is done on the stored float16 confidence, converted exactly to float64 and compared
    with the threshold as a float64 (so a threshold of 0.95 is not first rounded to float16 0.9502).
    The official code compares the float32 Q instead; the two differ only for Q in
    [0.949951, 0.95), which float16 rounds up to 0.950195 (kept here, 255 there).
    """
    labels = np.asarray(labels)
    confidence = np.asarray(confidence)
    if labels.shape != confidence.shape:
        raise ValueError(f"training_labels: labels {labels.shape} and confidence {confidence.shape} differ in shape")
    if labels.dtype != np.uint8:
        raise ValueError(f"training_labels: labels must be uint8, got {labels.dtype}")
    if not _is_number(threshold) or not np.isfinite(threshold):
        raise ValueError(f"training_labels: threshold must be a finite number, got {threshold!r}")
    out = labels.copy()
    out[confidence.astype(np.float64) < float(threshold)] = IGNORE_LABEL
    return out


def seeds_from_cams(cams: np.ndarray, keys: Sequence[int] | np.ndarray, bg_threshold: float) -> np.ndarray:
    """Seed label map [0, k1+1, ...][argmax([t, cams])] (uint8): background where max cam <= t (ties go to background)."""
    cams = _check_cams(cams)
    lookup = _label_lookup(keys)
    if cams.shape[0] != lookup.size - 1:
        raise ValueError(f"seeds_from_cams: {cams.shape[0]} CAM(s) but {lookup.size - 1} key(s)")
    # The threshold row is built in the CAMs' dtype, as np.pad does in the SemPLeS/WeakTr code.
    background = np.full((1, *cams.shape[1:]), bg_threshold, dtype=cams.dtype)
    return lookup[np.argmax(np.concatenate([background, cams], axis=0), axis=0)]


def _label_space(seed_labels: np.ndarray, n_labels: int | None, label_values: Sequence[int] | None) -> np.ndarray:
    """The label values the CRF chooses among, in channel order."""
    if label_values is not None:
        values = np.asarray(label_values, dtype=np.int64).reshape(-1)
    elif n_labels is not None:
        values = np.arange(int(n_labels), dtype=np.int64)
    else:
        values = np.unique(seed_labels).astype(np.int64)
    if values.size == 0 or values.min() < 0 or values.max() > 255 or np.unique(values).size != values.size:
        raise ValueError(f"label_crf: label values must be distinct integers in [0, 255], got {values.tolist()}")
    return values


def _label_crf_q(
    image: np.ndarray, seed_labels: np.ndarray, values: np.ndarray, gt_prob: float, params: CrfParams
) -> tuple[np.ndarray, np.ndarray]:
    """Label-unary CRF on channel space `values`; returns (labels uint8, Q (C, H, W))."""
    seed_labels = np.asarray(seed_labels)
    if seed_labels.shape != image.shape[:2]:
        raise ValueError(f"label_crf: seed labels {seed_labels.shape} do not match the image {image.shape[:2]}")
    if seed_labels.dtype.kind not in "iu":
        raise ValueError(f"label_crf: seed labels must be integers, got {seed_labels.dtype}")
    index_of = np.full(256, -1, dtype=np.int64)
    index_of[values] = np.arange(values.size)
    if seed_labels.size and (seed_labels.min() < 0 or seed_labels.max() > 255):
        raise ValueError("label_crf: seed labels must lie in [0, 255]")
    indices = index_of[seed_labels]
    if np.any(indices < 0):
        missing = sorted(set(np.unique(seed_labels[indices < 0]).tolist()))
        raise ValueError(f"label_crf: seed value(s) {missing} are not in the label space {values.tolist()}")
    if values.size == 1:
        # A one-label CRF is trivial (and its unary divides by n - 1 = 0).
        q = np.ones((1, *seed_labels.shape), dtype=np.float32)
        return np.full(seed_labels.shape, values[0], dtype=np.uint8), q
    unary = unary_from_labels(indices, values.size, gt_prob)
    q = dense_crf(image, unary, params)
    return values.astype(np.uint8)[np.argmax(q, axis=0)], q


def label_crf(
    image_rgb: np.ndarray,
    seed_labels: np.ndarray,
    n_labels: int | None = None,
    gt_prob: float = 0.7,
    params: CrfParams = SEMPLES_VOC_PARAMS,
    label_values: Sequence[int] | None = None,
) -> np.ndarray:
    """SemPLeS/WeakTr label-unary CRF on an RGB image: refines a seed label map (class values) into uint8 labels.

    The label space (CRF channels) is ``label_values`` if given, else ``0..n_labels-1``, else the
    values present in the seeds. WeakTr runs the CRF on ``[0, k1+1, ...]`` (background plus the
    image's classes, ``n_labels = K + 1``), which is what :func:`crf_one_image` passes; the size of
    the label space changes the unary (-log((1 - gt_prob) / (n - 1))). The image is used as given
    (pass plain RGB for SemPLeS).
    """
    image = _check_image(image_rgb)
    seed_labels = np.asarray(seed_labels)
    values = _label_space(seed_labels, n_labels, label_values)
    labels, _ = _label_crf_q(image, seed_labels, values, gt_prob, params)
    return labels


# --------------------------------------------------------------------------------------------------
# Per image and many images


def crf_one_image(
    image_rgb: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int] | np.ndarray,
    cfg: CrfConfig | Mapping[str, Any] | None = None,
    image_id: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Whole per-image path: upsample (K, h, w) CAMs to the image, CRF, then (labels uint8, confidence float16).

    ``prob_unary`` (CLIP-ES): labels are the CRF labels **before** the 255 rule (apply
    :func:`training_labels` with ``cfg.confidence`` for training masks). ``label_unary`` (SemPLeS):
    seeds ``argmax([t, cams])`` refined by the label CRF; the confidence is still max_c Q but SemPLeS
    applies no threshold (``cfg.confidence`` defaults to 0). CAMs already at image size are resized
    onto themselves (an exact copy), so full-resolution CAMs work too.
    """
    cfg = _as_config(cfg)
    where = f"image {image_id}" if image_id is not None else "image"
    try:
        image_rgb = _check_image(image_rgb, where)
        cams = _check_cams(cams)
        keys = np.asarray(keys)
        if keys.ndim != 1 or keys.shape[0] != cams.shape[0]:
            raise ValueError(f"{cams.shape[0]} CAM(s) but keys {keys.tolist()}")
        lookup = _label_lookup(keys)
        height, width = image_rgb.shape[:2]
        maps = upsample_cams(cams, (height, width), faithful=cfg.faithful_upsample)
        image = crf_image(image_rgb, cfg.image_mode)
        if cfg.mode == "prob_unary":
            unary = unary_from_probabilities(probability_stack(maps, cfg.alpha))
            return labels_and_confidence(dense_crf(image, unary, cfg.params), keys)
        seeds = seeds_from_cams(maps, keys, cfg.bg_threshold)
        labels, q = _label_crf_q(image, seeds, lookup.astype(np.int64), cfg.gt_prob, cfg.params)
        return labels, q.max(axis=0).astype(np.float16)
    except ValueError as err:
        if image_id is None or str(err).startswith(where):
            raise
        raise ValueError(f"{where}: {err}") from err


def _as_config(cfg: CrfConfig | Mapping[str, Any] | None) -> CrfConfig:
    """Accept a CrfConfig, a ``crf:`` mapping, or None (CLIP-ES defaults)."""
    if cfg is None:
        return CrfConfig()
    if isinstance(cfg, CrfConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return CrfConfig.from_dict(cfg)
    raise ValueError(f"crf config must be a CrfConfig or a mapping, got {type(cfg).__name__}")


def _run_item(item: tuple[str, Any, np.ndarray, Any], cfg: CrfConfig) -> tuple[str, np.ndarray, np.ndarray]:
    """Worker body: load the image if given as a path, then crf_one_image."""
    try:
        image_id, image, cams, keys = item
    except (TypeError, ValueError) as err:
        raise ValueError(f"crf_many: each item must be (image_id, image_path_or_array, cams, keys): {err}") from err
    if isinstance(image, (str, os.PathLike)):
        try:
            image = decode_image(image)
        except ImageDecodeError as err:
            raise ImageDecodeError(f"image {image_id}: {err}") from err
    labels, confidence = crf_one_image(image, cams, keys, cfg, image_id=str(image_id))
    return image_id, labels, confidence


def _init_worker() -> None:
    """Pin native thread pools to one thread so that N workers use N cores."""
    for name in _THREAD_ENV:
        os.environ[name] = "1"
    cv2.setNumThreads(1)


@contextlib.contextmanager
def _single_thread_env() -> Iterator[None]:
    """Temporarily set the thread variables, so spawned workers start with them (BLAS reads them at import)."""
    saved = {name: os.environ.get(name) for name in _THREAD_ENV}
    try:
        for name in _THREAD_ENV:
            os.environ[name] = "1"
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def crf_many(
    items: Iterable[tuple[str, Any, np.ndarray, Any]],
    cfg: CrfConfig | Mapping[str, Any] | None = None,
    workers: int = 1,
    progress_stream: TextIO | None = sys.stderr,
    total: int | None = None,
    start_method: str = "spawn",
    max_in_flight: int | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """CRF over (image_id, image path or RGB array, cams (K, h, w), keys) items; yields (image_id, labels, confidence) in input order.

    ``workers=1`` runs in this process. Otherwise a ``multiprocessing`` pool (``spawn`` by default,
    so it is safe after torch/OpenMP threads exist; a script that calls this must guard its top
    level with ``if __name__ == "__main__":``) with each worker pinned to one native thread. At most
    ``max_in_flight`` items (default 4 per worker) are submitted ahead of the consumer, so memory
    stays bounded for any input length; ``Pool.imap`` is not used because its feeder thread drains
    the whole input iterator at once. Progress (:func:`wsss.progress.progress`) goes to ``progress_stream``
    (None: none).
    """
    cfg = _as_config(cfg)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"crf_many: workers must be a positive integer, got {workers!r}")
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    window = int(max_in_flight) if max_in_flight is not None else 4 * int(workers)
    if window < 1:
        raise ValueError(f"crf_many: max_in_flight must be >= 1, got {max_in_flight!r}")
    bar = progress(total=total, desc="dense CRF", stream=progress_stream, disable=progress_stream is None)
    try:
        if workers == 1:
            for item in items:
                result = _run_item(item, cfg)
                bar.update(1)
                yield result
            return
        context = multiprocessing.get_context(start_method)
        with _single_thread_env():
            pool = context.Pool(int(workers), initializer=_init_worker)
        try:
            pending: deque = deque()
            for item in items:
                pending.append(pool.apply_async(_run_item, (item, cfg)))
                while len(pending) >= window:
                    result = pending.popleft().get()
                    bar.update(1)
                    yield result
            while pending:
                result = pending.popleft().get()
                bar.update(1)
                yield result
            pool.close()
            pool.join()
        finally:
            # Also reached when the consumer stops early or a worker raised.
            pool.terminate()
    finally:
        bar.close()
