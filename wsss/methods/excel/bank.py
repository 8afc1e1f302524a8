"""ExCEL step 1: the attribute bank of a descriptor set, clustered with the CLIP text tower (or ExCEL's
released bank file), cached per descriptor set, CLIP and clustering settings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.clip.configured import load_configured_clip
from wsss.devices import default_device
from wsss.h5store import write_stage
from wsss.methods.excel import DEMO_DESCRIPTORS
from wsss.methods.excel.attributes import kmeans, owner_flags, read_descriptors

log = logging.getLogger(__name__)


def token_counter(tokenizer) -> tuple[Callable[[str], int], int]:
    """(sentence -> its CLIP token count with SOT and EOT, the tokenizer's context length)."""
    return (lambda sentence: len(tokenizer.encode(sentence)) + 2), int(tokenizer.context_length)


def encode_sentences(model, tokenizer, sentences: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """(N, E) float32 unit rows: each sentence through the text tower as written (no template)."""
    device = model.token_embedding.weight.device
    chunks = []
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            emb = model.encode_text(tokenizer(list(sentences[start:start + batch_size])).to(device)).float()
            chunks.append(emb / emb.norm(dim=-1, keepdim=True))
    return torch.cat(chunks).cpu().numpy()


def released_bank(path: str | Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres (k, E), flags (C, k)) from ExCEL's released ``.pth``: a list of a (E, k) and a (C, k) tensor."""
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stored, (list, tuple)) or len(stored) != 2:
        raise ValueError(f"{path}: expected ExCEL's bank, a list [centres (E, k), flags (C, k)]")
    centres, flags = (np.asarray(t, dtype=np.float32) for t in stored)
    if flags.shape[0] != n_classes or centres.shape[1] != flags.shape[1]:
        raise ValueError(f"{path}: bank of shapes {centres.shape} and {flags.shape} does not fit {n_classes} classes")
    return centres.T.copy(), flags.astype(bool)


def run_attribute_bank(descriptors_path: str | Path | None, classes: Sequence[str], attributes: Mapping[str, Any],
                       clip: Mapping[str, Any], checkpoint: Sequence[str | Path], out_path: str | Path,
                       locking: Any = None) -> None:
    """Cluster the descriptor sentences into ``attributes.bank.n_clusters`` centres, or read the released bank.

    ``descriptors_path`` None clusters the demo world's own descriptor set.
    """
    bank = attributes["bank"]
    params = {"attributes": dict(attributes), "clip": dict(clip), "classes": list(classes)}
    if bank["source"] == "file":
        centres, flags = released_bank(bank["path"], len(classes))
        inputs, sentences = [bank["path"]], 0
    else:
        model, tokenizer, _, _ = load_configured_clip(clip, checkpoint, default_device())
        count, context = token_counter(tokenizer)
        descriptors_path = descriptors_path or DEMO_DESCRIPTORS
        table = read_descriptors(descriptors_path, classes, count, attributes.get("descriptor_prefix"), context)
        texts = [sentence for name in classes for sentence in table[name]]
        sentence_class = np.repeat(np.arange(len(classes)), [len(table[name]) for name in classes])
        centres, labels = kmeans(encode_sentences(model, tokenizer, texts), int(bank["n_clusters"]),
                                 seed=int(bank["seed"]), n_init=int(bank["n_init"]))
        flags = owner_flags(labels, sentence_class, len(classes), len(centres))
        inputs, sentences = [descriptors_path, *checkpoint], len(texts)
    with write_stage(out_path, "attribute_bank", params, inputs=inputs, locking=locking) as out:
        out.create_dataset("centres", data=np.asarray(centres, np.float32))
        out.create_dataset("flags", data=flags)
        out.attrs["sentences"] = sentences
    owners = flags.sum(axis=0)
    log.info("attribute bank: %d centres from %d sentences; clusters with one owner class: %d, shared: %d",
             len(centres), sentences, int(np.sum(owners == 1)), int(np.sum(owners > 1)))
