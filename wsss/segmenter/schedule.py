"""Optimiser parameter groups with DeepLab's LR multipliers, and the step-wise poly learning-rate schedule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from wsss.segmenter.deeplab import ASPP, FrozenBatchNorm2d

# Caffe lr_mult / decay_mult of DeepLabV2: backbone 1x, classifier weights 10x, classifier biases 20x
# without weight decay.
LR_MULT = (1.0, 10.0, 20.0)


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_mult: Sequence[float] = LR_MULT) -> list[dict]:
    """SGD parameter groups: backbone (1x lr), ASPP weights (10x), ASPP biases (20x, no weight decay).

    `lr_mult` overrides the three multipliers (from-scratch training wants (1, 1, 1): the 10x/20x
    classifier rates assume a pretrained backbone). Only trainable parameters are included (frozen
    BatchNorm affine parameters are left out, as in deeplab-pytorch which hands only convolution
    parameters to the optimiser). Each group carries its `name` and `lr_mult`.
    """
    if len(lr_mult) != 3 or any(m < 0 for m in lr_mult):
        raise ValueError(f"lr_mult must be three non-negative multipliers (backbone, weight, bias), got {lr_mult}")
    head_w, head_b, head_ids = [], [], set()
    for m in model.modules():
        if isinstance(m, ASPP):
            for conv in m.branches:
                head_w.append(conv.weight)
                head_ids.add(id(conv.weight))
                if conv.bias is not None:
                    head_b.append(conv.bias)
                    head_ids.add(id(conv.bias))
    if not head_w:
        raise ValueError("model has no ASPP classifier; param_groups expects a DeepLabV2 or MSC(DeepLabV2)")
    frozen_ids = {id(p) for m in model.modules() if isinstance(m, FrozenBatchNorm2d) for p in m.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids and id(p) not in frozen_ids]
    groups = [
        {"name": "backbone", "params": backbone, "weight_decay": weight_decay},
        {"name": "classifier_weight", "params": [p for p in head_w if p.requires_grad], "weight_decay": weight_decay},
        {"name": "classifier_bias", "params": [p for p in head_b if p.requires_grad], "weight_decay": 0.0},
    ]
    for g, mult in zip(groups, lr_mult):
        g["lr_mult"] = float(mult)
        g["lr"] = lr * g["lr_mult"]
    return [g for g in groups if g["params"]]


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float = 0.9, step_every: int = 1) -> float:
    """base_lr * (1 - it/max_iter)^power, with `it` rounded down to a multiple of `step_every`, clamped at max_iter."""
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    if step_every < 1:
        raise ValueError(f"step_every must be >= 1, got {step_every}")
    it = min((max(iteration, 0) // step_every) * step_every, max_iter)
    return base_lr * (1.0 - it / max_iter) ** power


class PolyLR:
    """Poly schedule on each group's base lr; `iteration` = number of optimiser updates done so far.

    The lr used for update `it` (0-based) is poly_lr(base, it, max_iter, power, step_every); with
    step_every=10 this is deeplab-pytorch's PolynomialLR stepped with `epoch=iteration` after each update.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_iter: int, power: float = 0.9, step_every: int = 10):
        self.optimizer = optimizer
        self.max_iter, self.power, self.step_every = int(max_iter), float(power), int(step_every)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.iteration = 0
        self._apply()

    def _apply(self) -> None:
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = poly_lr(base, self.iteration, self.max_iter, self.power, self.step_every)

    def step(self) -> None:
        """Advance by one optimiser update."""
        self.iteration += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Current lr of each group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Everything needed to resume."""
        return {
            "max_iter": self.max_iter,
            "power": self.power,
            "step_every": self.step_every,
            "base_lrs": list(self.base_lrs),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()` and re-apply the lr of the restored iteration."""
        self.max_iter, self.power = int(state["max_iter"]), float(state["power"])
        self.step_every, self.iteration = int(state["step_every"]), int(state["iteration"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()
