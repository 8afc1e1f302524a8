"""SemPLeS training and inference: which parameters learn in each stage, resume after a kill, flip-consistent CAMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsss.clip.factory import build_clip
from wsss.demo.clip import demo_tokenizer, model_config, save_demo_clip
from wsss.demo.clip_settings import resolve_settings
from wsss.method_kinds import resolve_methods
from wsss.methods.semples import DEFAULTS, imported_generator
from wsss.methods.semples import train as semples_train
from wsss.methods.semples.cams import multiscale_cams
from wsss.methods.semples.prompts import encode_with_prompts, init_prompts, prompt_tokens
from wsss.methods.semples.train import (
    Critic,
    Schedule,
    head_step,
    load_model,
    prompt_step,
    release_fp16,
    train_match,
    train_phase1,
)
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


# The release's learning rate of every epoch for the default (VOC) schedules: timm's cosine stepped after
# each epoch (``lr_scheduler.step(epoch)``), so epoch e >= 1 runs the schedule's value at e - 1.
RELEASE_LR = {
    "phase1": [1e-06, 1e-06, 1.58e-05, 3.06e-05, 4.54e-05, 6.02e-05, 7.38926e-05, 7.34093e-05, 7.28414e-05,
               7.21902e-05, 7.14577e-05, 7.06458e-05, 6.97568e-05, 6.87931e-05, 6.77572e-05, 6.66522e-05, 6.5481e-05,
               6.42467e-05, 6.29529e-05, 6.1603e-05, 6.02008e-05, 5.875e-05, 5.72547e-05, 5.57189e-05, 5.4147e-05,
               5.25431e-05, 5.09116e-05, 4.92571e-05, 4.75841e-05, 4.58972e-05, 4.42009e-05, 4.25e-05, 4.07991e-05,
               3.91028e-05, 3.74159e-05, 3.57429e-05, 3.40884e-05, 3.24569e-05, 3.0853e-05, 2.92811e-05, 2.77453e-05,
               2.625e-05, 2.47992e-05, 2.3397e-05, 2.20471e-05, 2.07533e-05, 1.9519e-05, 1.83478e-05, 1.72428e-05,
               1.62069e-05, 1.52432e-05, 1.43542e-05, 1.35423e-05, 1.28098e-05, 1.21586e-05, 1.15907e-05, 1.11074e-05,
               1.07102e-05, 1.04001e-05, 1.0178e-05],
    "match": [6.4e-05, 6.4e-05, 6.39561e-05, 6.38247e-05, 6.3606e-05, 6.33007e-05, 6.29096e-05, 6.24338e-05,
              6.18746e-05, 6.12335e-05, 6.05122e-05, 5.97128e-05, 5.88375e-05, 5.78885e-05, 5.68687e-05, 5.57806e-05,
              5.46274e-05, 5.34122e-05, 5.21383e-05, 5.08091e-05, 4.94284e-05, 4.8e-05, 4.65277e-05, 4.50156e-05,
              4.34678e-05, 4.18885e-05, 4.02822e-05, 3.86532e-05, 3.70059e-05, 3.53449e-05, 3.36748e-05, 3.2e-05,
              3.03252e-05, 2.86551e-05, 2.69941e-05, 2.53468e-05, 2.37178e-05, 2.21115e-05, 2.05322e-05, 1.89844e-05,
              1.74723e-05, 1.6e-05, 1.45716e-05, 1.31909e-05, 1.18617e-05, 1.05878e-05, 9.37258e-06, 8.21937e-06,
              7.13133e-06, 6.11146e-06, 5.16254e-06, 4.28719e-06, 3.48779e-06, 2.76655e-06, 2.12543e-06, 1.56619e-06,
              1.09037e-06, 6.99277e-07, 3.93973e-07, 1.75299e-07],
    "prompts": [0.025, 0.025, 0.0249829, 0.0249315, 0.0248461, 0.0247268, 0.0245741, 0.0243882, 0.0241698, 0.0239193,
                0.0236376, 0.0233253, 0.0229834, 0.0226127, 0.0222143, 0.0217893, 0.0213388, 0.0208641, 0.0203665,
                0.0198473, 0.019308, 0.01875, 0.0181749, 0.0175842, 0.0169796, 0.0163627, 0.0157352, 0.0150989,
                0.0144554, 0.0138066, 0.0131542, 0.0125, 0.0118458, 0.0111934, 0.0105446, 0.0099011, 0.00926476,
                0.00863729, 0.0080204, 0.00741579, 0.00682512, 0.00625, 0.00569201, 0.00515268, 0.0046335, 0.00413587,
                0.00366117, 0.00321069, 0.00278568, 0.00238729, 0.00201662, 0.00167468, 0.00136242, 0.00108068,
                0.000830245, 0.000611794, 0.000425927, 0.000273155, 0.000153896, 6.84763e-05],
}
RELEASE_LR["refine"] = RELEASE_LR["match"]  # stage c runs stage a's schedule


@pytest.mark.parametrize("stage", ["phase1", "match", "prompts", "refine"])
def test_every_epoch_runs_the_releases_learning_rate(stage):
    schedule = Schedule.from_section(DEFAULTS[stage])
    got = [schedule.lr_at(epoch) for epoch in range(schedule.epochs)]
    assert got == pytest.approx(RELEASE_LR[stage], rel=1e-5)


def test_learning_rates_equal_timms_scheduler_stepped_after_each_epoch():
    """The release's loop on timm's own scheduler, for a warm-up schedule and a plain one."""
    from timm.scheduler.cosine_lr import CosineLRScheduler

    for section in (DEFAULTS["phase1"], {"epochs": 7, "batch_size": 32, "lr": 5.12e-6, "weight_decay": 0.0}):
        schedule = Schedule.from_section(section)
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=schedule.lr)
        timm_schedule = CosineLRScheduler(optimizer, t_initial=schedule.epochs, lr_min=schedule.min_lr,
                                          warmup_t=schedule.warmup_epochs, warmup_lr_init=schedule.warmup_lr)
        for epoch in range(schedule.epochs):
            assert schedule.lr_at(epoch) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9), epoch
            timm_schedule.step(epoch)  # after the epoch, as the release does


def test_schedule_scales_lr_by_batch_and_follows_timm_cosine():
    schedule = Schedule.from_section({"epochs": 10, "batch_size": 64, "lr": 5.12e-4, "weight_decay": 0.03})
    assert schedule.lr == pytest.approx(6.4e-5)  # the release's effective lr (spec §5.4)
    assert schedule.scheduled_lr(0) == pytest.approx(6.4e-5)
    assert schedule.scheduled_lr(5) == pytest.approx(3.2e-5)
    assert [schedule.lr_at(e) for e in (0, 1, 6)] == pytest.approx([6.4e-5, 6.4e-5, 3.2e-5])
    warm = Schedule(epochs=10, batch_size=512, lr=1.0, weight_decay=0.0, min_lr=0.1, warmup_epochs=2,
                    warmup_lr=0.0)
    assert [warm.scheduled_lr(e) for e in (0, 1)] == [0.0, 0.5]
    assert warm.scheduled_lr(2) == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 0.2)))
    assert [warm.lr_at(e) for e in (0, 1, 2, 3)] == pytest.approx([0.0, 0.0, 0.5, warm.scheduled_lr(2)])


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


def test_release_arithmetic_is_fp16_autocast_on_cuda_only():
    assert release_fp16("faithful", torch.device("cuda", 0))
    assert not release_fp16("faithful", torch.device("cpu"))  # the release runs fp32 on the CPU
    assert not release_fp16("fp32", torch.device("cuda", 0))
    with pytest.raises(ValueError, match="precision"):
        release_fp16("bf16", torch.device("cpu"))
    assert DEFAULTS["precision"] == "faithful"


def test_stage_a_starts_from_an_imported_release_phase1_model(tmp_path):
    import argparse

    manifest, method = _tiny_manifest(tmp_path), _tiny_method()
    settings = resolve_settings(CLIP_SETTINGS)
    torch.manual_seed(0)
    save_demo_clip(build_clip(model_config(settings)).eval(), model_config(settings), tmp_path / "clip.pt",
                   settings=settings, metrics={})
    tokens = {"num_classes": CLASSES, "class_slots": None}
    torch.manual_seed(4)
    released = WeakTr(semples_train.weaktr_config(method, tokens))
    path = tmp_path / "WeakTr_CAM_Generation.pth"
    torch.save({"model": released.state_dict(), "epoch": 59, "args": argparse.Namespace(lr=6e-4)}, path)
    method["phase1"]["checkpoint"] = str(path)
    method["critic"] = {"model": "demo", "pretrained": None, "sha256": None, "precision": "fp32"}
    method["match"].update(epochs=1, batch_size=4)

    imported = imported_generator(method, "demo", ["a", "b", "c"])
    assert WeakTrConfig.from_dict(imported) == semples_train.weaktr_config(method, tokens)
    train_match(manifest, path, [tmp_path / "clip.pt"], ["a", "b", "c"], method, tmp_path / "match.pt",
                tmp_path / "match_ck", imported=imported)
    trained = load_model(tmp_path / "match.pt").state_dict()
    start = released.state_dict()
    assert all(torch.equal(trained[k], start[k]) for k in start if is_backbone_key(k)), "the imported backbone"
    assert not all(torch.equal(trained[k], start[k]) for k in start if not is_backbone_key(k)), "the head learnt"


class _ReadRecorder(dict):
    """Settings that note the dotted path of every key read through ``[]`` or ``get``."""

    def __init__(self, data, seen: set[str], path: str = ""):
        super().__init__({k: _ReadRecorder(v, seen, f"{path}{k}.") if isinstance(v, dict) else v
                          for k, v in data.items()})
        self._seen, self._path = seen, path

    def __getitem__(self, key):
        self._seen.add(self._path + key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._seen.add(self._path + key)
        return super().get(key, default)


def _schema_leaves(schema: dict, node: dict, path: str = "") -> set[str]:
    """Dotted paths of the leaf keys below a schema node ($ref followed)."""
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    if node.get("type") != "object" or "properties" not in node:
        return {path.rstrip(".")}
    leaves = set()
    for key, child in node["properties"].items():
        leaves |= _schema_leaves(schema, child, f"{path}{key}.")
    return leaves


def test_every_semples_key_of_the_schema_is_read(tmp_path, monkeypatch):
    """Runs every SemPLeS step on toy data with settings that record what they read; no schema key goes unread."""
    import yaml
    from timm.models.vision_transformer import VisionTransformer

    from wsss.clip import configured
    from wsss.crf import CrfConfig, CrfParams
    from wsss.digests import file_digest
    from wsss.methods.semples import class_names, class_tokens, final_stage, stage_keys
    from wsss.methods.semples.cams import run_cams
    from wsss.methods.semples.checks import check_instance, phase1_digest
    from wsss.methods.semples.train import load_phase1, train_prompts, train_refine
    from wsss.stages.par import DEFAULT_PAR, par_settings
    from wsss.stages.pseudo_masks import recipe_refiner, recipe_threshold

    repo = Path(__file__).resolve().parents[1]
    # the kind's own schema, with the keys every instance shares (config.schema.yaml, methods) followed there
    shared = yaml.safe_load((repo / "rules" / "schemas" / "config.schema.yaml").read_text())
    schema = yaml.safe_load((repo / "rules" / "schemas" / "methods" / "semples.schema.yaml").read_text())
    tail_keys = shared["properties"]["methods"]["additionalProperties"]["properties"]
    schema["properties"].update({key: tail_keys[key] for key in ("segmenter", "pseudo_masks")})
    schema["$defs"].update(shared["$defs"])
    leaves = _schema_leaves(schema, schema)

    manifest, names = _tiny_manifest(tmp_path), ["a", "b", "c"]
    settings = resolve_settings(CLIP_SETTINGS)
    clip = tmp_path / "clip.pt"
    save_demo_clip(build_clip(model_config(settings)).eval(), model_config(settings), clip, settings=settings,
                   metrics={})
    deit = tmp_path / "deit.pth"
    torch.save({"model": VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                                           num_classes=10).state_dict()}, deit)
    method = _tiny_method()
    method["weaktr"].update(init="deit", checkpoint=str(deit), sha256=file_digest(deit))
    method["critic"] = {"model": "demo", "pretrained": None, "sha256": None, "precision": "fp32"}
    method["text"]["class_names"] = names
    for stage in ("match", "prompts", "refine"):
        method[stage].update(epochs=1, batch_size=4)
    method["prompts"]["length"] = 2
    # the shared tail's refiner settings, stated so that their reads are recorded
    method["pseudo_masks"].update(refiner="crf", par=dict(DEFAULT_PAR))

    seen: set[str] = set()
    rec = _ReadRecorder(method, seen)
    check_instance("s", rec, "demo")
    tokens = class_tokens(rec, "demo", names)
    train_phase1(manifest, 3, rec, tmp_path / "p1.pt", tmp_path / "p1", clip_checkpoint=[clip], tokens=tokens)
    train_match(manifest, tmp_path / "p1.pt", [clip], class_names(rec, "demo", names), rec, tmp_path / "a.pt",
                tmp_path / "a", imported=imported_generator(rec, "demo", names))
    train_prompts(manifest, tmp_path / "a.pt", [clip], names, rec, tmp_path / "b.pt", tmp_path / "b.csv",
                  tmp_path / "b")
    train_refine(manifest, tmp_path / "p1.pt", tmp_path / "b.pt", [clip], names, rec, tmp_path / "c.pt",
                 tmp_path / "c", imported=imported_generator(rec, "demo", names))
    assert final_stage(rec) == "refine"
    run_cams(manifest, "00000", 8, tmp_path / "c.pt", rec["cam"], tmp_path / "cams.h5", precision=rec["precision"])
    recipe_threshold(rec["pseudo_masks"])  # the shared tail's readers of the recipe
    recipe_refiner(rec["pseudo_masks"])
    par_settings(rec["pseudo_masks"])
    # a phase-1 model imported by file: checked and digested before any job, keyed by its digest
    imported = _ReadRecorder({**method, "phase1": {**method["phase1"], "checkpoint": str(deit)}}, seen)
    stage_keys(imported, {"split": "train"}, phase1_digest("s", imported))
    with pytest.raises(ValueError, match="not a WeakTr checkpoint"):
        load_phase1(deit, imported_generator(imported, "demo", names))

    # a pretrained critic: its loader reads the file, digest and precision keys
    class Loaded(Exception):
        pass

    def loader(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(configured, "load_clip", loader)
    with pytest.raises(Loaded):
        configured.load_configured_clip(_ReadRecorder({**method["critic"], "model": "ViT-B-32"}, seen, "critic."),
                                        [], torch.device("cpu"))

    # the tail's CRF section is read whole by CrfConfig.from_dict, which refuses every key it does not know
    whole_sections = {f"pseudo_masks.crf.{name}" for name in (*CrfConfig.__dataclass_fields__,
                                                          *CrfParams.__dataclass_fields__, "preset", "bg_alpha",
                                                          "gaussian", "bilateral", "params", "iters")}
    # likewise the geometry of the mask generator, by WeakTrConfig.from_dict
    whole_sections |= {f"weaktr.{name}" for name in WeakTrConfig.__dataclass_fields__}
    # and the rules read the instance's kind, whether it trains a segmenter and whether it is an oracle
    rules_text = "\n".join(p.read_text() for p in (repo / "rules").rglob("*.smk"))
    by_rules = {key for key in ("kind", "segmenter", "gt_select") if f'"{key}"' in rules_text}
    unread = sorted(leaf for leaf in leaves if leaf not in seen | whole_sections | by_rules
                    and not any(leaf.startswith(field + ".") for field in whole_sections))
    assert not unread, f"SemPLeS config keys that no code reads: {unread}"

    def default_leaves(value, path=""):
        if not isinstance(value, dict):
            return {path.rstrip(".")}
        return set().union(*(default_leaves(v, f"{path}{k}.") for k, v in value.items()))

    assert default_leaves(DEFAULTS) <= leaves, "every DEFAULTS key is in the schema (and so checked above)"
