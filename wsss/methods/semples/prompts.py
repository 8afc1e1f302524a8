"""SemPLeS learned background prompts in CLIP's text encoder (SemPLeS spec §3, §5.2).

Each class k owns ``L`` prompt vectors ``P_k`` in CLIP's token-embedding space. They stand in for the
words of ``"[SOT] a photo of p_1 … p_L . [EOT]"``, a row the release builds by hand: its full stop is
the bare byte token ``.`` (id 13 in CLIP's vocabulary), not the word-final ``.</w>`` (id 269) that
tokenising ``"a photo of ."`` would give. The text transformer then reads them exactly as
open_clip's ``CLIP.encode_text`` reads token embeddings, so ``u_k = encode_with_prompts(P)[k]`` lives
in the same space as CLIP's class text features ``t_k``. Stage b learns ``P`` (CLIP frozen), stage c
uses the frozen ``u_k``. ``nearest_words`` names what a learned prompt has become by its nearest nouns
(the packaged ``prompt_vocabulary.txt``).
"""

from __future__ import annotations

from importlib import resources
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool

from wsss.clip.text_features import text_features

__all__ = [
    "PROMPT_TEXT",
    "PROMPT_INITS",
    "full_stop_id",
    "prompt_tokens",
    "encode_with_prompts",
    "init_prompts",
    "topk_stable",
    "nearest_words",
    "load_vocabulary",
]

# The fixed words before the prompt vectors; the full stop after them is a token of its own (FULL_STOP).
PROMPT_TEXT = "a photo of"
# The release appends the bare byte token "." (without the word-end mark), which no tokenised text yields
# after a word; this is its key in the BPE vocabulary.
FULL_STOP = "."
PROMPT_INITS = ("uniform", "normal")
# Any ordinary word id marks the prompt slots: their embeddings are replaced, and it must only stay below
# the end-of-text id, which open_clip's argmax pooling finds as the largest id.
_PLACEHOLDER_WORD = "x"

Tokenizer = Callable[[Sequence[str]], torch.Tensor]


def _content(row: torch.Tensor) -> torch.Tensor:
    """A tokenised row up to and including its end-of-text token (the largest id), padding dropped."""
    return row[: int(row.argmax()) + 1]


def full_stop_id(tokenizer: Tokenizer) -> int:
    """The id of the bare full stop "." in the tokenizer's BPE vocabulary (13 in CLIP's)."""
    encoder = getattr(tokenizer, "encoder", None)
    if not isinstance(encoder, dict) or FULL_STOP not in encoder:
        raise ValueError(f"the prompt row needs a BPE tokenizer with a vocabulary (CLIP's SimpleTokenizer); "
                         f"{type(tokenizer).__name__} has no entry for {FULL_STOP!r}")
    return int(encoder[FULL_STOP])


def prompt_tokens(tokenizer: Tokenizer, prompt_len: int, context_length: int) -> tuple[torch.Tensor, slice]:
    """Token ids (context_length,) of "[SOT] a photo of X…X . [EOT]" padded with 0, and the slice of the X slots."""
    if isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or prompt_len < 1:
        raise ValueError(f"prompt_len must be a positive integer, got {prompt_len!r}")
    full_stop = full_stop_id(tokenizer)
    words = _content(tokenizer([PROMPT_TEXT])[0]).long()  # [SOT] a photo of [EOT]
    placeholder = _content(tokenizer([_PLACEHOLDER_WORD])[0])[1]
    start, end_of_text = len(words) - 1, words[-1]
    fixed = start + 2  # [SOT] a photo of, then the full stop and [EOT]
    if fixed + prompt_len > context_length:
        raise ValueError(
            f"prompt_len={prompt_len} does not fit: {PROMPT_TEXT!r} with its full stop takes {fixed} tokens, "
            f"and {fixed} + prompt_len > context_length {context_length}"
        )
    tokens = torch.zeros(context_length, dtype=torch.long)
    tokens[:start] = words[:start]
    tokens[start : start + prompt_len] = placeholder
    tokens[start + prompt_len] = full_stop
    tokens[start + prompt_len + 1] = end_of_text
    return tokens, slice(start, start + prompt_len)


def encode_with_prompts(
    model: CLIP, prompts: torch.Tensor, tokens: torch.Tensor, slots: slice, *, normalize: bool = False
) -> torch.Tensor:
    """(C, embed_dim) text features of C prompt sequences; prompts (C, L, width) replace the embeddings at slots.

    Mirrors ``CLIP.encode_text`` step for step (cast dtype, causal mask, ln_final, pooling, projection).
    Unnormalised by default, like ``encode_text``; the SemPLeS losses normalise themselves.
    """
    if prompts.ndim != 3:
        raise ValueError(f"prompts must be (C, L, width), got shape {tuple(prompts.shape)}")
    if tokens.ndim != 1 or tokens.shape[0] != model.positional_embedding.shape[0]:
        raise ValueError(
            f"tokens must be ({model.positional_embedding.shape[0]},) for this model, got {tuple(tokens.shape)}"
        )
    length = slots.stop - slots.start
    width = model.token_embedding.weight.shape[1]
    if prompts.shape[1:] != (length, width):
        raise ValueError(f"prompts must be (C, {length}, {width}) for these slots, got {tuple(prompts.shape)}")
    cast_dtype = model.transformer.get_cast_dtype()
    tokens = tokens.to(model.token_embedding.weight.device)
    rows = tokens.expand(prompts.shape[0], -1)

    fixed = model.token_embedding(rows).to(cast_dtype)
    # Concatenation, not in-place assignment, keeps the autograd path from the output to `prompts`.
    x = torch.cat([fixed[:, : slots.start], prompts.to(cast_dtype), fixed[:, slots.stop :]], dim=1)
    x = x + model.positional_embedding.to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    # The placeholder ids sit below the end-of-text id, so argmax pooling reads index slots.stop + 1.
    x = text_global_pool(x, rows, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def init_prompts(
    num_classes: int,
    prompt_len: int,
    width: int,
    mode: str = "uniform",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(num_classes, prompt_len, width) float32 initial prompts: U[0,1) (the release) or N(0, 0.02) (CoOp)."""
    shape = (num_classes, prompt_len, width)
    if mode == "uniform":
        return torch.rand(shape, generator=generator)
    if mode == "normal":
        return torch.randn(shape, generator=generator) * 0.02
    raise ValueError(f"mode (prompt init) must be one of {PROMPT_INITS}, got {mode!r}")


def topk_stable(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k values and column indices per row, descending; equal scores keep their column order."""
    values, indices = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[..., :k], indices[..., :k]


def nearest_words(
    model: CLIP,
    tokenizer: Tokenizer,
    prompt_features: torch.Tensor,
    words: Sequence[str],
    template: str = "a photo of {}.",
    k: int = 5,
    *,
    batch_size: int = 256,
) -> list[list[tuple[str, float]]]:
    """Per class, the k words whose CLIP text feature ("a photo of {word}.") is closest in cosine to its prompt."""
    words = list(words)
    if not words:
        raise ValueError("words must not be empty")
    if k < 1:
        raise ValueError(f"k must be positive, got {k!r}")
    word_features = text_features(model, tokenizer, words, [template], batch_size=batch_size)  # unit rows
    with torch.no_grad():
        prompts = F.normalize(prompt_features.detach().float().to(word_features.device), dim=-1)
        values, indices = topk_stable(prompts @ word_features.T, min(k, len(words)))
    return [
        [(words[j], float(v)) for v, j in zip(row_values.tolist(), row_indices.tolist())]
        for row_values, row_indices in zip(values, indices)
    ]


def load_vocabulary() -> list[str]:
    """The packaged noun list for nearest_words (wsss/data/prompt_vocabulary.txt), one word or phrase a line."""
    text = resources.files("wsss.data").joinpath("prompt_vocabulary.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
