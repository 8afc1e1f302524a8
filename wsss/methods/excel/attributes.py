"""Text-side enrichment (TSE): an attribute bank clustered from descriptor sentences, and each class's text
embedding moved towards the attribute centres it matches best."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["read_descriptors", "kmeans", "owner_flags", "dropped_count", "enrich_class_text"]


def read_descriptors(path: str | Path, classes: Sequence[str], token_count: Callable[[str], int],
                     prefix: str | None = None, context_length: int = 77) -> dict[str, list[str]]:
    """The descriptor JSON (class name -> sentences), lower-cased, checked against the dataset's classes.

    ``prefix`` (a template with ``{}``) is put before every sentence; every class needs at least one
    sentence, and each sentence must fit CLIP's context (``token_count`` counts SOT and EOT too).
    """
    path = Path(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable descriptor JSON ({error})") from error
    if not isinstance(table, dict):
        raise ValueError(f"{path}: must map each class name to a list of sentences")
    missing = [name for name in classes if name not in table]
    if missing:
        raise ValueError(f"{path}: no descriptors for the classes {missing}")
    out = {}
    for name in classes:
        sentences = table[name]
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) and s.strip()
                                                                        for s in sentences):
            raise ValueError(f"{path}: class {name!r} needs a non-empty list of non-empty sentences")
        sentences = [((prefix.format(name) if prefix else "") + s).lower() for s in sentences]
        for sentence in sentences:
            if token_count(sentence) > context_length:
                raise ValueError(f"{path}: a sentence of class {name!r} is longer than CLIP's {context_length} "
                                 f"tokens: {sentence[:80]!r}")
        out[name] = sentences
    return out


def _plus_plus_init(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (greedy, 2 + log k candidates per centre, as scikit-learn does)."""
    n = len(points)
    trials = 2 + int(math.log(k))
    centres = [points[rng.integers(n)]]
    closest = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        candidates = np.searchsorted(np.cumsum(closest), rng.random(trials) * closest.sum())
        candidates = np.minimum(candidates, n - 1)
        distances = ((points[None, :, :] - points[candidates][:, None, :]) ** 2).sum(axis=2)
        distances = np.minimum(distances, closest[None, :])
        best = int(np.argmin(distances.sum(axis=1)))
        centres.append(points[candidates[best]])
        closest = distances[best]
    return np.stack(centres)


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """(centres (k, D), labels (N,)): Lloyd's k-means from k-means++ seeds, the lowest inertia of ``n_init`` runs.

    float64 throughout and a seeded generator, so a bank is the same on every machine.
    """
    points = np.asarray(points, dtype=np.float64)
    if not 1 <= k <= len(points):
        raise ValueError(f"n_clusters must be in 1..{len(points)} (the number of sentences), got {k}")
    rng = np.random.default_rng(seed)
    # scikit-learn's tolerance: relative to the mean variance of the features
    tolerance = tol * float(np.mean(points.var(axis=0)))
    best = None
    for _ in range(n_init):
        centres = _plus_plus_init(points, k, rng)
        for _ in range(max_iter):
            distances = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
            labels = distances.argmin(axis=1)
            moved = np.stack([points[labels == c].mean(axis=0) if np.any(labels == c) else centres[c]
                              for c in range(k)])
            shift = float(((moved - centres) ** 2).sum())
            centres = moved
            if shift <= tolerance:
                break
        distances = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        labels = distances.argmin(axis=1)
        inertia = float(distances[np.arange(len(points)), labels].sum())
        if best is None or inertia < best[0]:
            best = (inertia, centres, labels)
    return best[1], best[2]


def owner_flags(labels: np.ndarray, sentence_class: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """(C, k) bool: the clusters each class's sentences fell into."""
    flags = np.zeros((n_classes, k), dtype=bool)
    flags[np.asarray(sentence_class), np.asarray(labels)] = True
    return flags


def dropped_count(k: int, keep_fraction: float) -> int:
    """How many of the k attribute scores a class drops: the reference's int((1 - keep) * k), rounded first so
    float noise cannot lose one (11 for 112 and 22 for 224 at keep 0.9)."""
    return int(math.floor(round((1.0 - keep_fraction) * k, 9)))


def enrich_class_text(class_text: torch.Tensor, centres: torch.Tensor, keep_fraction: float = 0.9,
                      temperature: float = 1.0, weight: float = 1.0) -> torch.Tensor:
    """t'_c = normalise(t_c + weight * sum_j w_cj a_j), w_c a softmax of t_c . a_j / temperature over the kept
    (largest) scores; (C, D) unit rows in fp32. Centres stay as k-means returned them (not re-normalised)."""
    text = torch.as_tensor(class_text, dtype=torch.float32)
    bank = torch.as_tensor(centres, dtype=torch.float32)
    scores = text @ bank.t() / temperature  # (C, k) raw dot products
    keep = bank.shape[0] - dropped_count(bank.shape[0], keep_fraction)
    top, index = scores.topk(keep, dim=1)
    weights = torch.zeros_like(scores).scatter_(1, index, torch.softmax(top, dim=1))
    enriched = text + weight * weights @ bank
    return enriched / enriched.norm(dim=1, keepdim=True)
