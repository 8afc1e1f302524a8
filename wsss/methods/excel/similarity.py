"""Patch-text maps of ExCEL: CLIP Surgery's feature surgery between token features and every text."""

from __future__ import annotations

import torch

__all__ = ["normalise_features", "feature_surgery", "token_minmax"]

_NORMS = ("tokens", "channels")


def normalise_features(features: torch.Tensor, mode: str = "tokens") -> torch.Tensor:
    """(L, E) features scaled to unit L2 norm along the token axis (the reference's quirk: every channel over
    the L tokens) or, with ``channels``, each token to unit norm."""
    if mode not in _NORMS:
        raise ValueError(f"feature_norm must be one of {_NORMS}, got {mode!r}")
    return features / features.norm(dim=0 if mode == "tokens" else 1, keepdim=True)


def feature_surgery(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """s_ij = w_j X_i.T_j - mean_j'(w_j' X_i.T_j') with w = softmax(2 X_0.T) / its mean; (L, J) for L tokens
    (row 0 the CLS token) and J texts (classes, then background words)."""
    similarity = features @ text.t()  # (L, J)
    p = torch.softmax(2.0 * similarity[0], dim=0)
    weighted = similarity * (p / p.mean())
    return weighted - weighted.mean(dim=1, keepdim=True)


def token_minmax(scores: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Each text's scores min-max scaled over all tokens, the CLS token included, without epsilon; a constant
    column (where the reference divides by zero) becomes zeros. Returns (maps, how many were constant)."""
    low = scores.amin(dim=0, keepdim=True)
    span = scores.amax(dim=0, keepdim=True) - low
    flat = span == 0
    maps = torch.where(flat, torch.zeros_like(scores), (scores - low) / torch.where(flat, torch.ones_like(span), span))
    return maps, int(flat.sum())

