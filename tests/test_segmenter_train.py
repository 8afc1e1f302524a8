"""Augmentation, data order, checkpoint/resume exactness, a short training run, and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.segmenter.augment import BGR_MEAN, augment, denormalise, normalise
from wsss.segmenter.deeplab import build_deeplab
from wsss.segmenter.predict import predict_labels, predict_logits, predict_probs
from wsss.segmenter.train import (
    CHECKPOINT_NAME,
    IterationBatches,
    SegmenterConfig,
    load_segmenter,
    train_segmenter,
)


COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], dtype=np.uint8)


class Squares(torch.utils.data.Dataset):
    """Noisy grey background with one or two coloured squares; label = colour index + 1."""

    def __init__(self, n: int, size: int = 32, seed: int = 0) -> None:
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        s = self.size
        img = rng.integers(90, 160, (s, s, 3)).astype(np.uint8)
        lab = np.zeros((s, s), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            c, side = int(rng.integers(0, 3)), int(rng.integers(s // 3, s // 2 + 1))
            y, x = rng.integers(0, s - side + 1, size=2)
            noise = rng.integers(-20, 21, (side, side, 3))
            img[y : y + side, x : x + side] = np.clip(COLOURS[c].astype(int) + noise, 0, 255)
            lab[y : y + side, x : x + side] = c + 1
        return {"image": img, "label": lab, "id": f"sq{i}"}


def _colour_coded(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image of 6x6-pixel blocks whose colour encodes the label: label k <-> (40k, 255-40k, 100)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 5, (-(-h // 6), -(-w // 6)))
    label = np.kron(blocks, np.ones((6, 6), dtype=np.int64))[:h, :w]
    img = np.stack([40 * label, 255 - 40 * label, np.full_like(label, 100)], axis=-1).astype(np.uint8)
    return img, label


def _decode(img_rgb: np.ndarray) -> np.ndarray:
    return np.round(img_rgb[..., 0].astype(float) / 40).astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------------


def test_normalise_modes_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    x = normalise(img, "bgr_mean")
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    assert x[0, 2, 3].item() == pytest.approx(img[2, 3, 2] - BGR_MEAN[0])  # channel 0 is blue
    for mode in ("bgr_mean", "rgb_imagenet"):
        assert np.array_equal(denormalise(normalise(img, mode), mode), img)
    with pytest.raises(ValueError, match="normalisation"):
        normalise(img, "lab")


@pytest.mark.parametrize("mode", ["bgr_mean", "rgb_imagenet"])
def test_crop_flip_keeps_labels_aligned_exactly(mode):
    img, label = _colour_coded(33, 47)
    x, y = normalise(img, mode), torch.from_numpy(label)
    flips = 0
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        xi, yi = augment(x, y, crop=24, generator=g, scales=(1.0,), flip=True)
        assert xi.shape == (3, 24, 24) and yi.shape == (24, 24)
        assert np.array_equal(_decode(denormalise(xi, mode)), yi.numpy())
        # the crop is a window of the (possibly mirrored) original
        found = any(
            np.array_equal(yi.numpy(), lab[t : t + 24, l : l + 24])
            for lab in (label, label[:, ::-1])
            for t in range(33 - 23)
            for l in range(47 - 23)
        )
        assert found
        flips += int(
            not any(np.array_equal(yi.numpy(), label[t : t + 24, l : l + 24]) for t in range(10) for l in range(24))
        )
    assert 0 < flips < 8


def test_scaled_labels_follow_the_image():
    img, label = _colour_coded(33, 47, seed=1)
    x, y = normalise(img), torch.from_numpy(label)
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        xi, yi = augment(x, y, crop=30, generator=g, scales=(0.5, 0.75, 1.25, 1.5), flip=True)
        decoded = _decode(denormalise(xi))
        valid = yi.numpy() != 255
        # bilinear images blur block borders; nearest labels must agree everywhere else
        assert (decoded[valid] == yi.numpy()[valid]).mean() > 0.8
        interior = valid & (
            F.max_pool2d(torch.from_numpy(decoded)[None, None].float(), 3, 1, 1)[0, 0].numpy()
            == -F.max_pool2d(-torch.from_numpy(decoded)[None, None].float(), 3, 1, 1)[0, 0].numpy()
        )
        assert (decoded[interior] == yi.numpy()[interior]).mean() > 0.98


def test_padding_uses_mean_and_255_and_is_deterministic():
    img, label = _colour_coded(13, 17)
    x, y = normalise(img), torch.from_numpy(label)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = augment(x, y, crop=32, generator=g1, scales=(1.0,), flip=False)
    b = augment(x, y, crop=32, generator=g2, scales=(1.0,), flip=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    xi, yi = a
    assert torch.equal(yi[:13, :17], y) and torch.equal(xi[:, :13, :17], x)  # padding is bottom/right
    assert (yi[13:] == 255).all() and (yi[:, 17:] == 255).all()
    assert (xi[:, 13:] == 0).all() and (xi[:, :, 17:] == 0).all()  # normalised mean
    assert (denormalise(xi)[20, 20] == np.round(np.array(BGR_MEAN[::-1]))).all()
    # a scale range draws continuous scales
    g = torch.Generator().manual_seed(0)
    sizes = {augment(x, y, crop=8, generator=g, scales=(), scale_range=(0.5, 2.0))[0].shape for _ in range(3)}
    assert sizes == {(3, 8, 8)}


def test_data_order_is_a_permutation_per_epoch():
    cfg = SegmenterConfig(n_classes=4, batch_size=3, grad_accum=2, crop=16, seed=3, iterations=10)
    batches = IterationBatches(Squares(10), cfg)
    order = [batches.index_at(p) for p in range(30)]
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert order[:10] != order[10:20]
    again = IterationBatches(Squares(10), cfg)
    assert [again.index_at(p) for p in reversed(range(30))] == order[::-1]  # no hidden iterator state
    micro = batches[4]
    assert len(micro) == 2 and micro[0][0].shape == (3, 3, 16, 16) and micro[1][1].shape == (3, 16, 16)
    assert torch.equal(micro[1][1], again[4][1][1])


def test_bad_labels_and_config_are_rejected(tmp_path):
    cfg = SegmenterConfig(n_classes=1, batch_size=1, grad_accum=1, crop=16, iterations=1)
    with pytest.raises(ValueError, match="sq0"):
        IterationBatches(Squares(1), cfg)[0]
    with pytest.raises(ValueError, match="unknown segmenter config keys: \\['bogus'\\]"):
        SegmenterConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="loss"):
        SegmenterConfig.from_dict({"loss": "dice"})
    cfg = SegmenterConfig.from_dict({"scales": [0.5, 1.0], "msc_scales": [], "n_classes": 3})
    assert cfg.scales == (0.5, 1.0) and SegmenterConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------------------------------------------
# training and resume
# ---------------------------------------------------------------------------------------------------


def _tiny_cfg(**kw) -> SegmenterConfig:
    base = dict(
        backbone="resnet18",
        n_classes=4,
        width=4,
        init="none",
        msc_scales=[0.5, 0.75],
        lr=0.01,
        iterations=6,
        batch_size=2,
        grad_accum=2,
        crop=24,
        scales=[0.75, 1.0, 1.25],
        loss="balanced_ce",
        bn="train",
        seed=7,
        checkpoint_every=3,
        log_every=1,
        lr_step_every=2,
    )
    base.update(kw)
    return SegmenterConfig.from_dict(base)


class _Kill(Exception):
    pass


def test_resume_is_bit_exact(tmp_path):
    data = Squares(10, size=28)
    cfg = _tiny_cfg()
    logs: list[str] = []
    straight = train_segmenter(data, cfg, tmp_path / "straight", log=logs.append)
    assert straight.name == "final.pt"
    assert any(line.startswith("iter 6/6 loss") for line in logs)

    # interruption 1: stop_after, then call again
    partial = train_segmenter(data, cfg, tmp_path / "stopped", stop_after=3, log=lambda s: None)
    assert partial == tmp_path / "stopped" / CHECKPOINT_NAME
    assert torch.load(partial, weights_only=True)["iteration"] == 3
    resumed_logs: list[str] = []
    # the data order has no iterator state, so the resumed half may even use a worker process
    with_worker = SegmenterConfig.from_dict({**cfg.to_dict(), "num_workers": 1})
    resumed = train_segmenter(data, with_worker, tmp_path / "stopped", log=resumed_logs.append)
    assert any("resuming" in line and "iteration 3" in line for line in resumed_logs)

    # interruption 2: an exception raised by a hook right after iteration 3 (a killed job)
    def kill(iteration, info):
        assert np.isfinite(info["loss"]) and info["lr"] > 0
        if iteration == 3:
            raise _Kill

    with pytest.raises(_Kill):
        train_segmenter(data, cfg, tmp_path / "killed", callback=kill, log=lambda s: None)
    killed = train_segmenter(data, cfg, tmp_path / "killed", log=lambda s: None)

    ref = torch.load(straight, weights_only=True)["model"]
    for other in (resumed, killed):
        got = torch.load(other, weights_only=True)["model"]
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref)
    # the weights did move, so equality is not trivial
    fresh = build_deeplab("resnet18", 4, width=4, bn="train")
    assert not torch.equal(fresh.base.aspp.branches[0].weight, ref["aspp.branches.0.weight"])
    assert not list((tmp_path / "stopped").glob(".*tmp*"))

    # a finished run returns at once; a changed config refuses to resume
    assert train_segmenter(data, cfg, tmp_path / "straight", log=lambda s: None) == straight
    with pytest.raises(ValueError, match="lr"):
        train_segmenter(data, _tiny_cfg(lr=0.02), tmp_path / "straight", log=lambda s: None)


def test_short_training_learns_squares(tmp_path):
    train, val = Squares(48, size=40, seed=0), Squares(16, size=40, seed=1)
    cfg = _tiny_cfg(
        width=8,
        msc_scales=[],
        iterations=300,
        batch_size=8,
        grad_accum=1,
        crop=40,
        scales=[0.75, 1.0, 1.25],
        loss="ce",
        lr=0.01,
        checkpoint_every=1000,
        log_every=10,
        lr_step_every=1,
    )
    losses: list[float] = []
    final = train_segmenter(
        train, cfg, tmp_path, log=lambda s: None, callback=lambda it, info: losses.append(info["loss"])
    )
    assert np.mean(losses[-10:]) < 0.35 * np.mean(losses[:10])
    model = load_segmenter(final)
    hist = np.zeros((4, 4), np.int64)
    for i in range(len(val)):
        item = val[i]
        pred = predict_labels(model, item["image"], flip=False)
        hist += np.bincount(4 * item["label"].astype(np.int64).ravel() + pred.ravel(), minlength=16).reshape(4, 4)
    accuracy = np.trace(hist) / hist.sum()
    iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    print(f"toy squares: pixel accuracy {accuracy:.3f}, mIoU {np.nanmean(iou):.3f}, iou {np.round(iou, 3)}")
    assert accuracy > 0.88, accuracy  # all-background would score about 0.8 (and mIoU about 0.2)
    assert np.nanmean(iou) > 0.6, iou


# ---------------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------------


def test_predict_probs_shapes_flip_and_msc_protocol():
    torch.manual_seed(0)
    model = build_deeplab("resnet18", 5, width=4, bn="train", msc_scales=(0.5, 0.75))
    model.train()(torch.randn(2, 3, 24, 24))  # non-trivial BN statistics
    img = np.random.default_rng(0).integers(0, 256, (33, 47, 3)).astype(np.uint8)
    probs = predict_probs(model, img, scales=(1.0, 0.75), flip=True)
    assert probs.shape == (5, 33, 47) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)
    assert model.training  # mode restored
    mirrored = predict_probs(model, np.ascontiguousarray(img[:, ::-1]), scales=(1.0, 0.75), flip=True)
    assert np.allclose(mirrored, probs[:, :, ::-1], atol=1e-5)

    # defaults on an MSC model = deeplab-pytorch's test: max-fused logits, bilinear upsampling, softmax
    model.eval()
    with torch.no_grad():
        logits = model(normalise(img)[None])
        expected = torch.softmax(F.interpolate(logits, size=(33, 47), mode="bilinear", align_corners=False), 1)[0]
    assert np.allclose(predict_probs(model, img, flip=False), expected.numpy(), atol=1e-6)
    labels = predict_labels(model, img, flip=False)
    assert labels.shape == (33, 47) and np.array_equal(labels, expected.argmax(0).numpy())
    assert predict_logits(model, img, flip=False).shape == (5, 33, 47)
