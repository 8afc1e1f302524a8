"""Tests for wsss.methods.semples.prompts: prompt tokens, the prompt text encoder, init, nearest words, vocabulary."""

from __future__ import annotations

import pytest
import torch

from wsss.clip.factory import build_clip
from wsss.demo.clip import demo_tokenizer, model_config
from wsss.demo.clip_settings import resolve_settings
from wsss.methods.semples.prompts import (
    encode_with_prompts,
    init_prompts,
    load_vocabulary,
    nearest_words,
    prompt_tokens,
    topk_stable,
)

CONTEXT = 32
SOT, EOT = 49406, 49407
# "a photo of", and the release's full stop: the bare byte token "." (13), not the word-final ".</w>" (269)
A_PHOTO_OF, FULL_STOP, WORD_FINAL_FULL_STOP = [320, 1125, 539], 13, 269
TINY = {
    "image_size": 32,
    "patch_size": 8,
    "vision_width": 32,
    "vision_layers": 1,
    "vision_heads": 2,
    "attn_blocks": 1,
    "text_width": 32,
    "text_layers": 2,
    "text_heads": 2,
    "embed_dim": 16,
    "context_length": CONTEXT,
    "train_sizes": [32],
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_clip(model_config(resolve_settings(TINY))).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer(CONTEXT)


def _word_ids(tok, phrase: str) -> torch.Tensor:
    """BPE ids of a phrase without the start/end markers and padding."""
    row = tok([phrase])[0]
    return row[1 : int(row.argmax())]


@pytest.mark.parametrize("prompt_len", [1, 2, 5])
def test_prompt_tokens_layout(tok, prompt_len):
    tokens, slots = prompt_tokens(tok, prompt_len, CONTEXT)
    assert tokens.shape == (CONTEXT,) and tokens.dtype == torch.long
    assert slots == slice(4, 4 + prompt_len)
    ids = tokens.tolist()
    assert ids[:4] == [SOT, *A_PHOTO_OF]
    assert ids[4 + prompt_len :] == [FULL_STOP, EOT] + [0] * (CONTEXT - 6 - prompt_len)
    assert int(tokens.argmax()) == 5 + prompt_len
    assert all(0 < i < EOT for i in ids[slots])


def test_prompt_row_is_the_releases_for_its_template():
    """The release's row for L = 30 in CLIP's 77-token context, written out id by id."""
    tok77 = demo_tokenizer(77)
    tokens, slots = prompt_tokens(tok77, 30, 77)
    ids = tokens.tolist()
    assert ids[:4] == [49406, 320, 1125, 539]  # [SOT] a photo of
    assert slots == slice(4, 34)
    assert ids[34:37] == [13, 49407, 0]  # the bare full stop, [EOT], padding
    assert ids[37:] == [0] * 40
    assert WORD_FINAL_FULL_STOP not in ids
    # the end-of-text token sits at 5 + L, where the text pooling reads
    assert int(tokens.argmax()) == 35


def test_prompt_len_too_long_names_prompt_len(tok):
    prompt_tokens(tok, CONTEXT - 6, CONTEXT)  # exactly fills the context
    with pytest.raises(ValueError, match="prompt_len"):
        prompt_tokens(tok, CONTEXT - 5, CONTEXT)
    with pytest.raises(ValueError, match="prompt_len"):
        prompt_tokens(tok, 0, CONTEXT)


def test_prompt_row_needs_a_vocabulary():
    with pytest.raises(ValueError, match="vocabulary"):
        prompt_tokens(lambda texts: torch.zeros(len(texts), CONTEXT, dtype=torch.long), 2, CONTEXT)


def test_prompts_of_word_embeddings_reproduce_encode_text(model, tok):
    phrases = ["red dog", "brick wall"]  # two BPE tokens each
    word_ids = torch.stack([_word_ids(tok, p) for p in phrases])
    assert word_ids.shape == (2, 2)
    tokens, slots = prompt_tokens(tok, 2, CONTEXT)
    # the same rows built from the tokenised words, with the bare full stop put in by hand
    reference = tok([f"a photo of {p}" for p in phrases])
    reference = torch.cat([reference[:, :6], torch.full((2, 1), FULL_STOP), reference[:, 6:-1]], dim=1)
    for row, ids in zip(reference, word_ids):
        filled = tokens.clone()
        filled[slots] = ids
        assert filled.tolist() == row.tolist()

    prompts = model.token_embedding(word_ids)  # (2, L, width)
    got = encode_with_prompts(model, prompts, tokens, slots)
    torch.testing.assert_close(got, model.encode_text(reference), atol=1e-5, rtol=0)
    normalised = encode_with_prompts(model, prompts, tokens, slots, normalize=True)
    torch.testing.assert_close(normalised.norm(dim=-1), torch.ones(2))


def test_gradients_reach_prompts_not_clip(model, tok):
    tokens, slots = prompt_tokens(tok, 3, CONTEXT)
    prompts = init_prompts(4, 3, model.token_embedding.weight.shape[1], generator=torch.Generator().manual_seed(1))
    prompts.requires_grad_(True)
    out = encode_with_prompts(model, prompts, tokens, slots)
    assert out.shape == (4, model.text_projection.shape[1])
    out.square().sum().backward()
    assert prompts.grad is not None and (prompts.grad.abs().sum(dim=(1, 2)) > 0).all()
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_encode_with_prompts_checks_shapes(model, tok):
    tokens, slots = prompt_tokens(tok, 3, CONTEXT)
    with pytest.raises(ValueError, match="prompts"):
        encode_with_prompts(model, torch.zeros(2, 4, 32), tokens, slots)
    with pytest.raises(ValueError, match="tokens"):
        encode_with_prompts(model, torch.zeros(2, 3, 32), tokens[:-1], slots)


def test_init_prompts_modes():
    uniform = init_prompts(3, 4, 8, generator=torch.Generator().manual_seed(0))
    assert uniform.shape == (3, 4, 8) and uniform.dtype == torch.float32
    assert 0 <= uniform.min() and uniform.max() < 1
    torch.testing.assert_close(uniform, init_prompts(3, 4, 8, generator=torch.Generator().manual_seed(0)))
    normal = init_prompts(20, 30, 64, mode="normal", generator=torch.Generator().manual_seed(0))
    assert abs(normal.mean().item()) < 0.002 and normal.std().item() == pytest.approx(0.02, rel=0.05)
    with pytest.raises(ValueError, match="mode"):
        init_prompts(3, 4, 8, mode="zeros")


def test_topk_stable_breaks_ties_by_order():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1], [0.2, 0.2, 0.2, 0.2, 0.3]])
    values, indices = topk_stable(scores, 3)
    assert indices.tolist() == [[1, 3, 0], [4, 0, 1]]
    torch.testing.assert_close(values, torch.tensor([[0.9, 0.9, 0.5], [0.3, 0.2, 0.2]]))


def test_nearest_words_finds_the_word_itself(model, tok):
    words = ["cat", "grass", "water", "dog", "sky", "road"]
    features = model.encode_text(tok(["a photo of grass.", "a photo of sky."]))
    result = nearest_words(model, tok, features, words, k=3, batch_size=4)
    assert len(result) == 2 and all(len(row) == 3 for row in result)
    assert result[0][0][0] == "grass" and result[0][0][1] == pytest.approx(1.0, abs=1e-5)
    assert result[1][0][0] == "sky" and result[1][0][1] == pytest.approx(1.0, abs=1e-5)
    for row in result:
        sims = [s for _, s in row]
        assert sims == sorted(sims, reverse=True)
    assert len(nearest_words(model, tok, features, words, k=50)[0]) == len(words)


def test_vocabulary_file():
    words = load_vocabulary()
    assert len(words) >= 400
    assert words == sorted(set(words))
    assert all(w == w.strip().lower() and w for w in words)
    background = (
        "grass water sky road sand wall rails track snow tree field sea beach cloud street building floor table"
    )
    background = background.split() + ["brick wall"]
    assert set(background) <= set(words)
