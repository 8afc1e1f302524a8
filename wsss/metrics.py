"""Segmentation metrics from a confusion matrix accumulated over all pixels of a split."""

from __future__ import annotations

import numpy as np

IGNORE = 255


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n_class: int) -> np.ndarray:
    """(n_class, n_class) int64 matrix, rows = ground truth, columns = prediction; GT >= n_class ignored."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    gt = gt.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    keep = (gt >= 0) & (gt < n_class)
    if (pred[keep] >= n_class).any() or (pred[keep] < 0).any():
        raise ValueError(f"prediction holds values outside 0..{n_class - 1} on scored pixels")
    return np.bincount(n_class * gt[keep] + pred[keep], minlength=n_class * n_class).reshape(n_class, n_class)


def scores(hist: np.ndarray) -> dict[str, object]:
    """Pixel accuracy, mean accuracy, mIoU over classes present in the GT, frequency-weighted IoU, per-class IoU."""
    hist = hist.astype(np.float64)
    tp = np.diag(hist)
    gt_count = hist.sum(axis=1)
    pred_count = hist.sum(axis=0)
    present = gt_count > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt_count + pred_count - tp)
        class_acc = tp / gt_count
    iou_present = np.where(present, iou, np.nan)
    total = hist.sum()
    freq = gt_count / total if total else np.zeros_like(gt_count)
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_accuracy": float(np.nanmean(np.where(present, class_acc, np.nan))) if present.any() else float("nan"),
        "miou": float(np.nanmean(iou_present)) if present.any() else float("nan"),
        "fwiou": float(np.nansum(freq[present] * iou[present])),
        "iou": iou_present,
        "present": present,
    }
