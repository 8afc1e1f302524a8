"""Segmentation stage: DeepLabV2(-MSC) model, losses, LR schedule, augmentation, training and prediction."""

from wsss.segmenter.augment import augment, denormalise, normalise
from wsss.segmenter.deeplab import MSC, DeepLabV2, build_deeplab, initialise, load_pretrained
from wsss.segmenter.losses import balanced_ce, ce_loss, segmentation_loss
from wsss.segmenter.predict import predict_labels, predict_logits, predict_probs
from wsss.segmenter.schedule import PolyLR, param_groups, poly_lr
from wsss.segmenter.train import SegmenterConfig, build_model, load_predictor, load_segmenter, train_segmenter

__all__ = [
    "DeepLabV2",
    "MSC",
    "build_deeplab",
    "initialise",
    "load_pretrained",
    "ce_loss",
    "balanced_ce",
    "segmentation_loss",
    "param_groups",
    "poly_lr",
    "PolyLR",
    "normalise",
    "denormalise",
    "augment",
    "SegmenterConfig",
    "build_model",
    "train_segmenter",
    "load_predictor",
    "load_segmenter",
    "predict_logits",
    "predict_probs",
    "predict_labels",
]
