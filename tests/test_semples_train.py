"""SemPLeS training and inference: which parameters learn in each stage, resume after a kill, flip-consistent CAMs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsss.clip.factory import build_clip
from wsss.demo.clip import demo_tokenizer, model_config
from wsss.demo.clip_settings import resolve_settings
from wsss.methods import resolve_methods
from wsss.methods.semples import train as semples_train
from wsss.methods.semples.cams import multiscale_cams
from wsss.methods.semples.prompts import encode_with_prompts, init_prompts, prompt_tokens
from wsss.methods.semples.train import Critic, Schedule, head_step, load_model, prompt_step, train_phase1
from wsss.methods.semples.weaktr import WeakTr, WeakTrConfig, is_backbone_key

CLASSES = 3
CLIP_SETTINGS = {"image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 1, "vision_heads": 2,
                 "attn_blocks": 1, "text_width": 32, "text_layers": 2, "text_heads": 2, "embed_dim": 16,
                 "context_length": 32, "train_sizes": [32]}


@pytest.fixture(scope="module")
def critic():
    torch.manual_seed(0)
    model = build_clip(model_config(resolve_settings(CLIP_SETTINGS))).eval().requires_grad_(False)
    # Class "text" features from image features: a random CLIP's text and image towers disagree, and
    # cosines outside the loss's clamp [1e-4, 0.9999] pass no gradient at all.
    with torch.no_grad():
        text = F.normalize(model.encode_image(torch.randn(CLASSES, 3, 32, 32, generator=torch.Generator().manual_seed(5))),
                           dim=-1)
    return Critic(model, demo_tokenizer(32), text, (32, 32))


def _generator(detach_backbone: bool) -> WeakTr:
    torch.manual_seed(1)
    config = WeakTrConfig(num_classes=CLASSES, image_size=32, patch_size=8, width=16, depth=2, heads=2,
                          aaf_reduction=2, drop_path=0.0)
    return WeakTr(config, detach_backbone=detach_backbone)


def _batch():
    torch.manual_seed(2)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return images, labels


def _grads(module: torch.nn.Module) -> dict[str, bool]:
    """Per parameter: whether it received a non-zero gradient."""
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in module.named_parameters()}


@pytest.mark.parametrize("stage", ["match", "refine"])
def test_stages_a_and_c_train_only_the_head_and_fusion(critic, stage):
    model = _generator(detach_backbone=True).train()
    background = F.normalize(torch.randn(CLASSES, 16), dim=-1) if stage == "refine" else None
    loss, terms = head_step(model, critic, 0.1, 2.4, background, 0.05)(*_batch())
    loss.backward()
    assert ("fg_prompt" in terms) == (stage == "refine")
    grads = _grads(model)
    assert not any(got for name, got in grads.items() if is_backbone_key(name)), "the ViT backbone is frozen"
    assert all(got for name, got in grads.items() if not is_backbone_key(name)), "head and AAF learn"
    assert all(p.grad is None for p in critic.model.parameters()), "CLIP never receives gradients"


def test_stage_b_trains_only_the_prompts(critic):
    model = _generator(detach_backbone=True).eval().requires_grad_(False)
    tokens, slots = prompt_tokens(critic.tokenizer, 4, 32)
    prompts = torch.nn.Parameter(init_prompts(CLASSES, 4, 32, generator=torch.Generator().manual_seed(0)))
    # Class text and image features near the prompts' own features, so that no cosine is clamped
    with torch.no_grad():
        anchor = encode_with_prompts(critic.model, prompts, tokens, slots, normalize=True)
    noise = torch.randn(CLASSES, anchor.shape[1], generator=torch.Generator().manual_seed(6))
    near = Critic(critic.model, critic.tokenizer, F.normalize(anchor + 0.3 * noise, dim=-1), (32, 32))
    near.encode_images = lambda views: F.normalize(anchor.mean(0) + views.mean(dim=(1, 2, 3))[:, None], dim=-1)
    loss, terms = prompt_step(model, near, prompts, tokens, slots, 1e-4, 0.02)(*_batch())
    loss.backward()
    assert set(terms) >= {"bg_prompt", "text_prompt"}
    # only the prompts of classes present in the batch (all three here) move
    assert prompts.grad is not None and bool((prompts.grad.abs().sum(dim=(1, 2)) > 0).all())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in critic.model.parameters())


def test_schedule_scales_lr_by_batch_and_follows_timm_cosine():
    schedule = Schedule.from_section({"epochs": 10, "batch_size": 64, "lr": 5.12e-4, "weight_decay": 0.03})
    assert schedule.lr == pytest.approx(6.4e-5)  # the release's effective lr (spec §5.4)
    assert schedule.lr_at(0) == pytest.approx(6.4e-5)
    assert schedule.lr_at(5) == pytest.approx(3.2e-5)
    warm = Schedule(epochs=10, batch_size=512, lr=1.0, weight_decay=0.0, min_lr=0.1, warmup_epochs=2,
                    warmup_lr=0.0)
    assert [warm.lr_at(e) for e in (0, 1)] == [0.0, 0.5]
    assert warm.lr_at(2) == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 0.2)))


def test_mirrored_image_gives_mirrored_cams():
    model = _generator(detach_backbone=False).eval()
    rng = np.random.default_rng(0)
    # sides that are patch multiples at every scale: the patch grid drops a remainder on one side only
    image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    cams = multiscale_cams(model, image, [0, 2], [1.0, 2.0], flip=True)
    mirrored = multiscale_cams(model, image.transpose(Image.FLIP_LEFT_RIGHT), [0, 2], [1.0, 2.0], flip=True)
    assert cams.shape == (2, 40, 48) and cams.min() >= 0 and cams.max() <= 1
    # float sums in another order and PIL's bicubic resize leave differences of about 1e-4
    np.testing.assert_allclose(mirrored, cams[..., ::-1], atol=1e-3)
    # without the flipped pass the model itself is not mirror-symmetric, so the test above can fail
    single = multiscale_cams(model, image, [0, 2], [1.0], flip=False)
    single_mirrored = multiscale_cams(model, image.transpose(Image.FLIP_LEFT_RIGHT), [0, 2], [1.0], flip=False)
    assert np.abs(single_mirrored - single[..., ::-1]).max() > 1e-2


def _tiny_manifest(tmp_path, n=8):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(path)
        rows.append({"image_id": f"img{i}", "image_path": str(path), "height": 40, "width": 44,
                     "labels": " ".join(str(k) for k in sorted({i % CLASSES, (i * 2) % CLASSES})),
                     "gt_path": "", "skip_reason": ""})
    manifest = tmp_path / "train.tsv"
    pd.DataFrame(rows).to_csv(manifest, sep="\t", index=False)
    return manifest


def _tiny_method():
    return resolve_methods({"semples": {
        "kind": "semples", "num_workers": 0, "seed": 7,
        "weaktr": {"init": "scratch", "image_size": 32, "patch_size": 8, "width": 16, "depth": 2, "heads": 2,
                   "aaf_reduction": 2},
        "phase1": {"epochs": 3, "batch_size": 4, "lr": 0.01, "warmup_epochs": 1},
        "augment": {"crop_size": 32},
    }})["semples"]


def test_training_killed_after_an_epoch_resumes_to_the_same_model(tmp_path, monkeypatch):
    manifest, method = _tiny_manifest(tmp_path), _tiny_method()
    train_phase1(manifest, CLASSES, method, tmp_path / "whole.pt", tmp_path / "whole_ck")

    calls = []
    real_write_history = semples_train.write_history

    def killed_after_first_epoch(history, path):
        real_write_history(history, path)
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as a kill between epochs, after the checkpoint was written

    monkeypatch.setattr(semples_train, "write_history", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_phase1(manifest, CLASSES, method, tmp_path / "resumed.pt", tmp_path / "resumed_ck")
    assert not (tmp_path / "resumed.pt").exists()
    train_phase1(manifest, CLASSES, method, tmp_path / "resumed.pt", tmp_path / "resumed_ck")
    assert len(calls) == 3, "the rerun trains epochs 2 and 3 only"

    whole, resumed = load_model(tmp_path / "whole.pt"), load_model(tmp_path / "resumed.pt")
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    history = pd.read_csv(tmp_path / "resumed_ck" / "loss_history.csv")
    assert list(history["epoch"]) == [1, 2, 3]


def test_a_checkpoint_of_other_settings_or_code_is_not_resumed(tmp_path):
    manifest, method = _tiny_manifest(tmp_path), _tiny_method()
    method["phase1"]["epochs"] = 1
    train_phase1(manifest, CLASSES, method, tmp_path / "old.pt", tmp_path / "ck", code="old")
    train_phase1(manifest, CLASSES, method, tmp_path / "fresh.pt", tmp_path / "fresh_ck", code="new")
    train_phase1(manifest, CLASSES, method, tmp_path / "rerun.pt", tmp_path / "ck", code="new")
    fresh, rerun = load_model(tmp_path / "fresh.pt"), load_model(tmp_path / "rerun.pt")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), rerun.state_dict().values()))
    assert len(pd.read_csv(tmp_path / "ck" / "loss_history.csv")) == 1
