"""Tests of the demo CLIP trainer: settings, checkpoint round trip, determinism, learning, dense loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsss.clip.factory import build_clip
from wsss.clip.transformer import encode_image_tokens
from wsss.demo.clip import (
    CHECKPOINT_FORMAT,
    DEFAULT_SETTINGS,
    appearance_affinity,
    attention_affinity_loss,
    augment_batch,
    caption_concepts,
    concept_affinity,
    concept_loss,
    dense_caption_loss,
    demo_tokenizer,
    encode_image_train,
    last_block_value_embeddings,
    load_demo_clip,
    model_config,
    pair_mosaic,
    resolve_settings,
    save_demo_clip,
    sigmoid_caption_loss,
    train_demo_clip,
)
from wsss.demo.world import generate_demo_world

# a tiny network: a few training steps take well under a second on one CPU core
TINY = {
    "image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 2, "vision_heads": 2,
    "text_width": 32, "text_layers": 1, "text_heads": 2, "context_length": 24, "embed_dim": 16,
    "batch_size": 8, "train_sizes": [32], "warmup": 2, "log_every": 0, "threads": 1,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_clip") / "world"
    generate_demo_world(root, seed=3, n_train=8, n_val=0, n_clip=8, min_size=40, max_size=48)
    return root


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_unknown_setting_is_rejected_by_name():
    with pytest.raises(ValueError, match="unknown setting 'stepz'"):
        resolve_settings({"stepz": 10})
    with pytest.raises(ValueError, match="vision_heads"):
        resolve_settings({"vision_width": 30, "vision_heads": 4})
    with pytest.raises(ValueError, match="precision"):
        resolve_settings({"precision": "fp16"})
    with pytest.raises(ValueError, match="'concept' needs dense_weight"):
        resolve_settings({"attn_weight": 1.0, "attn_target": "concept", "dense_weight": 0.0})
    with pytest.raises(ValueError, match="mosaic_fraction"):
        resolve_settings({"mosaic_fraction": 1.0})  # nothing would be left for the CLIP loss


def test_settings_override_key_by_key():
    s = resolve_settings({"steps": 7, "splits": ("train",)})
    assert s["steps"] == 7 and s["splits"] == ["train"]
    assert s["lr"] == DEFAULT_SETTINGS["lr"] and s["vision_layers"] == DEFAULT_SETTINGS["vision_layers"]
    # the defaults themselves are never mutated by an override
    assert DEFAULT_SETTINGS["splits"] == ["clip_pretrain", "train"]


def test_model_config_builds_the_configured_network():
    s = resolve_settings(TINY)
    model = build_clip(model_config(s))
    assert len(model.visual.transformer.resblocks) == 2
    assert model.visual.transformer.resblocks[0].attn.num_heads == 2
    assert model.context_length == 24 and model.visual.grid_size == (4, 4)
    assert torch.isclose(model.logit_scale.exp(), torch.tensor(1 / s["temperature_init"]))


def test_caption_concepts_matches_whole_words():
    present = caption_concepts(["a photo of a car and a bird on the road.", "boats in the sky."],
                               ["car", "bird", "road", "boat", "sky", "brick wall"])
    assert present.tolist() == [[True, True, True, False, False, False], [False, False, False, True, True, False]]
    # 'car' must not match inside another word
    assert not caption_concepts(["a cartoon."], ["car"])[0, 0]


def test_augment_batch_identity_crop_and_determinism():
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    out = augment_batch(images, 16, torch.Generator().manual_seed(0), mean=(0, 0, 0), std=(1, 1, 1))
    # a full-image crop at the same size samples pixel centres exactly
    assert torch.allclose(out, images.float() / 255, atol=1e-6)
    a = augment_batch(images, 8, torch.Generator().manual_seed(1), crop_scale=(0.3, 1), hflip=True)
    b = augment_batch(images, 8, torch.Generator().manual_seed(1), crop_scale=(0.3, 1), hflip=True)
    assert a.shape == (3, 3, 8, 8) and torch.equal(a, b)


def test_concept_loss_spreads_over_the_named_words():
    concepts = torch.eye(3)
    present = torch.tensor([[True, True, False]])
    scale = torch.tensor(20.0)
    both = torch.tensor([[1.0, 1.0, 0.0]])  # equally close to both named words
    one = torch.tensor([[1.0, 0.0, 0.0]])  # only one of them
    other = torch.tensor([[0.0, 0.0, 1.0]])  # an unnamed word
    lb, lo, lx = (float(concept_loss(e, concepts, present, scale)) for e in (both, one, other))
    assert lb < lo < lx
    # at the optimum the loss is the entropy of the target (two equally likely words) plus a small rest
    assert abs(lb - torch.log(torch.tensor(2.0)).item()) < 0.01


def test_dense_loss_prefers_patches_on_named_concepts():
    concepts = torch.eye(3)
    present = torch.tensor([[True, True, False]])
    good = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])  # one patch per named concept
    lazy = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0]]])  # the second named concept never wins
    wrong = torch.tensor([[[1.0, 0, 0], [0, 0, 1.0]]])  # a patch on an unnamed concept
    scale = torch.tensor(10.0)
    lg, ll, lw = (float(dense_caption_loss(p, concepts, present, scale, topk=1)) for p in (good, lazy, wrong))
    assert lg < ll and lg < lw
    assert lg < 0.01


def test_sigmoid_loss_matches_its_formula():
    gen = torch.Generator().manual_seed(0)
    patch = torch.randn(2, 5, 4, generator=gen)
    concepts = torch.randn(3, 4, generator=gen)
    present = torch.tensor([[True, False, True], [False, True, False]])
    scale, bias, k = torch.tensor(7.0), torch.tensor(-2.0), 2
    got = sigmoid_caption_loss(patch, concepts, present, scale, bias, topk=k)
    # the same loss, written out per image, patch and concept
    absent_terms, covered_terms, positive_terms = [], [], []
    for b in range(2):
        prob = torch.zeros(5, 3)
        for j in range(5):
            for c in range(3):
                cos = torch.dot(patch[b, j], concepts[c]) / (patch[b, j].norm() * concepts[c].norm())
                prob[j, c] = torch.sigmoid(scale * cos + bias)
                if not present[b, c]:
                    absent_terms.append(-torch.log(1 - prob[j, c]))
            none = torch.prod(torch.stack([1 - prob[j, c] for c in range(3) if present[b, c]]))
            covered_terms.append(-torch.log(1 - none))
        for c in range(3):
            if present[b, c]:
                positive_terms.append(-torch.log(prob[:, c].sort(descending=True).values[:k].mean()))
    want = sum(torch.stack(t).mean() for t in (absent_terms, covered_terms, positive_terms))
    assert torch.allclose(got, want, atol=1e-5)


def test_pair_mosaic_pastes_pairs_and_labels_each_patch_by_its_source():
    images = torch.arange(4.0)[:, None, None, None].expand(4, 3, 16, 24).clone()  # image i is filled with i
    present = torch.tensor([[True, False, False], [False, True, False], [False, False, True], [True, True, False]])
    mosaic, words = pair_mosaic(images, present, patch=8)
    assert mosaic.shape == (2, 3, 16, 48) and words.shape == (2, 2 * 6, 3)
    assert (mosaic[0, :, :, :24] == 0).all() and (mosaic[0, :, :, 24:] == 1).all()
    assert (mosaic[1, :, :, :24] == 2).all() and (mosaic[1, :, :, 24:] == 3).all()
    grid = words.reshape(2, 2, 6, 3)  # patch rows x columns, row-major like the patch tokens
    assert (grid[0, :, :3] == present[0]).all() and (grid[0, :, 3:] == present[1]).all()
    assert (grid[1, :, :3] == present[2]).all() and (grid[1, :, 3:] == present[3]).all()


@pytest.mark.parametrize("loss", ["dense", "sigmoid"])
def test_value_losses_read_per_patch_named_words(loss):
    gen = torch.Generator().manual_seed(2)
    patch, concepts = torch.randn(2, 4, 5, generator=gen), torch.randn(3, 5, generator=gen)
    present = torch.tensor([[True, False, True], [False, True, True]])

    def run(p, words):
        if loss == "dense":
            return dense_caption_loss(p, concepts, words, torch.tensor(5.0), topk=2)
        return sigmoid_caption_loss(p, concepts, words, torch.tensor(5.0), torch.tensor(-1.0), topk=2)

    # the same words on every patch is the per-image loss
    assert torch.allclose(run(patch, present), run(patch, present[:, None, :].expand(-1, 4, -1)))
    # a patch that looks like concept 1 costs more where its own words do not include concept 1
    on_1 = concepts[1].expand(2, 4, 5).clone()
    words = torch.tensor([[True, True, False]]).expand(2, 4, 3).clone()
    words_elsewhere = words.clone()
    words_elsewhere[:, :2, 1] = False  # the first two patches come from an image without concept 1
    assert run(on_1, words_elsewhere) > run(on_1, words) + 0.1


def test_sigmoid_loss_pushes_absent_concepts_down_on_every_patch():
    concepts = torch.eye(3)
    present = torch.tensor([[True, True, False]])  # the caption names concepts 0 and 1, not 2
    good = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    absent_on = torch.tensor([[[1.0, 0, 0], [0, 1.0, 1.0]]])  # a patch also looks like the unnamed concept
    lazy = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0]]])  # the second named concept is nowhere
    scale, bias = torch.tensor(20.0), torch.tensor(-10.0)
    lg, la, ll = (float(sigmoid_caption_loss(p, concepts, present, scale, bias, topk=1)) for p in (good, absent_on, lazy))
    assert lg < 0.01
    assert la > lg + 1 and ll > lg + 1


def test_attention_loss_is_lowest_for_the_concept_affinity():
    # 4 patches: two on concept 0, two on concept 1; the caption names both
    patch = torch.tensor([[[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]]])
    target = concept_affinity(patch, torch.eye(2), torch.tensor([[True, True]]), torch.tensor(50.0))
    assert torch.allclose(target[0], torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0],
                                                   [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]), atol=1e-4)

    def attn(rows):  # (1+N, 1+N) with a CLS row/column that the loss must ignore
        a = torch.full((5, 5), 0.1)
        a[1:, 1:] = torch.tensor(rows)
        return a[None]

    same = attn([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]])
    uniform = attn([[0.25] * 4] * 4)
    crossed = attn([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], [0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]])
    losses = [float(attention_affinity_loss([a], target)) for a in (same, uniform, crossed)]
    assert losses[0] < losses[1] < losses[2]
    assert abs(losses[0] - torch.log(torch.tensor(2.0)).item()) < 1e-3  # the entropy of the target rows


def test_appearance_affinity_groups_equal_colours():
    # a 2x2 patch grid: left column red, right column blue
    img = torch.zeros(1, 3, 4, 4)
    img[0, 0, :, :2] = 1.0
    img[0, 2, :, 2:] = 1.0
    aff = appearance_affinity(img, 2, sigma_rgb=0.2, sigma_xy=10.0, std=(1.0, 1.0, 1.0))
    assert aff.shape == (1, 4, 4) and torch.allclose(aff.sum(-1), torch.ones(1, 4))
    # patch 0 (top-left, red) is most similar to patch 2 (bottom-left, red), not to the blue ones
    assert aff[0, 0, 2] > 100 * aff[0, 0, 1] and aff[0, 0, 2] > 100 * aff[0, 0, 3]


def test_train_encoder_matches_with_and_without_attention_maps():
    torch.manual_seed(0)
    model = build_clip(model_config(resolve_settings(TINY))).eval()
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        c0, p0, a0, v0 = encode_image_train(model, x, 0)
        c2, p2, a2, v2 = encode_image_train(model, x, 2, value_path=True)
    assert v0 is None and v2.shape == p2.shape
    assert a0 == [] and len(a2) == 2 and a2[0].shape == (2, 1 + 15, 1 + 15)
    assert torch.allclose(a2[0].sum(-1), torch.ones(2, 16), atol=1e-5)
    assert p0.shape == (2, 15, 16) and torch.allclose(p0, p2, atol=1e-5) and torch.allclose(c0, c2, atol=1e-5)


def test_value_path_is_the_last_attention_restricted_to_self():
    # with every token attending only to itself, the last block's attention output is out_proj(v_j)
    torch.manual_seed(0)
    model = build_clip(model_config(resolve_settings(TINY))).eval()
    block = model.visual.transformer.resblocks[-1]
    tokens = torch.randn(2, 1 + 12, 32)
    a = block.ln_1(tokens)
    self_only = torch.full((13, 13), float("-inf")).fill_diagonal_(0.0)
    with torch.no_grad():
        out = block.attn(a, a, a, need_weights=False, attn_mask=self_only)[0]
        expected = model.visual.ln_post(out[:, 1:]) @ model.visual.proj
        got = last_block_value_embeddings(model, tokens)
    assert got.shape == (2, 12, 16)
    assert torch.allclose(got, expected, atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    s = resolve_settings(TINY)
    cfg = model_config(s)
    torch.manual_seed(0)
    model = build_clip(cfg).eval()
    path = tmp_path / "sub" / "clip.pt"
    save_demo_clip(model, cfg, path, settings=s, metrics={"x": 1})
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind
    loaded = load_demo_clip(path, "cpu")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    images = torch.randn(2, 3, 40, 32)  # not the training size: position embeddings get interpolated
    tokens = demo_tokenizer(24)(["a photo of a cow on the grass.", "a bird."])
    # frozen like the loaded copy: PyTorch may take another attention kernel for frozen weights, which
    # differs in the last bit on some CPUs
    model.requires_grad_(False)
    with torch.no_grad():
        ref_tok, ref_att = encode_image_tokens(model, images, upto_block=2)
        got_tok, got_att = encode_image_tokens(loaded, images, upto_block=2)
        assert torch.equal(ref_tok, got_tok) and torch.equal(ref_att[-1], got_att[-1])
        assert torch.equal(model.encode_text(tokens), loaded.encode_text(tokens))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["metrics"] == {"x": 1}
    assert ckpt["settings"]["vision_width"] == 32


def test_load_rejects_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_demo_clip(tmp_path / "missing.pt", "cpu")
    other = tmp_path / "other.pt"
    torch.save({"format": "something/1"}, other)
    with pytest.raises(ValueError, match="not a demo CLIP checkpoint"):
        load_demo_clip(other, "cpu")


def test_training_is_deterministic_for_a_seed(world, tmp_path):
    settings = {**TINY, "steps": 3, "dense_weight": 1.0, "attn_weight": 1.0, "attn_blocks": 1, "concept_weight": 1.0,
                "crop_scale": [0.5, 1.0], "train_sizes": [24, 32]}
    m1 = train_demo_clip(world, tmp_path / "a.pt", settings, seed=5, log=lambda _: None, device="cpu")
    train_demo_clip(world, tmp_path / "b.pt", settings, seed=5, log=lambda _: None, device="cpu")
    train_demo_clip(world, tmp_path / "c.pt", settings, seed=6, log=lambda _: None, device="cpu")
    a, b, c = _state(tmp_path / "a.pt"), _state(tmp_path / "b.pt"), _state(tmp_path / "c.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert m1["n_pairs"] == 16 and m1["steps"] == 3 and len(m1["loss_curve"]) == 3
    # the trained checkpoint loads into a working model
    model = load_demo_clip(tmp_path / "a.pt", "cpu")
    assert model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 16)


def test_loss_decreases_on_a_small_task(world, tmp_path):
    # 8 pairs, batch 8, no augmentation: matching them is a memorisation task the loss must show
    settings = {**TINY, "steps": 20, "lr": 3e-3, "splits": ["train"], "crop_scale": [1.0, 1.0],
                "crop_ratio": [1.0, 1.0], "hflip": False, "concept_weight": 0.5, "precision": "fp32",
                # the attention loss is bounded below by its target's entropy: off, so the curve is the CLIP loss's
                "attn_weight": 0.0, "value_dense_weight": 0.0}
    metrics = train_demo_clip(world, tmp_path / "m.pt", settings, seed=0, log=lambda _: None, device="cpu")
    curve = metrics["loss_curve"]
    assert len(curve) == 20
    assert sum(curve[-3:]) / 3 < 0.7 * sum(curve[:3]) / 3


def test_missing_world_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_demo_clip(tmp_path / "nowhere", tmp_path / "x.pt", TINY, log=lambda _: None)
    (tmp_path / "w").mkdir()
    with pytest.raises(FileNotFoundError, match="captions.tsv"):
        train_demo_clip(tmp_path / "w", tmp_path / "x.pt", TINY, log=lambda _: None)
