"""DeepLabV2 model, MSC, frozen BN, pretrained-weight mapping, LR groups/poly schedule and losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from wsss.segmenter.deeplab import (
    ASPP,
    MSC,
    DeepLabV2,
    FrozenBatchNorm2d,
    build_deeplab,
    imagenet_candidates,
    initialise,
    load_pretrained,
    translate_deeplab_key,
)
from wsss.segmenter.losses import balanced_ce, ce_loss, resize_labels, segmentation_loss
from wsss.segmenter.schedule import PolyLR, param_groups, poly_lr


def _ceil8(n: int) -> int:
    return -(-n // 8)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101"])
@pytest.mark.parametrize("size", [(33, 47), (40, 40), (17, 9)])
def test_output_stride_8_and_shapes(arch, size):
    torch.manual_seed(0)
    model = DeepLabV2(arch, n_classes=5, width=4).eval()
    feats = {}
    model.backbone.layer2.register_forward_hook(lambda m, i, o: feats.__setitem__("l2", o.shape))
    model.backbone.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("l4", o.shape))
    with torch.no_grad():
        y = model(torch.randn(2, 3, *size))
    assert y.shape == (2, 5, _ceil8(size[0]), _ceil8(size[1]))
    # layer3/layer4 keep layer2's resolution: their strides became dilations
    assert feats["l2"][-2:] == feats["l4"][-2:]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_dilations_of_stages(arch):
    model = DeepLabV2(arch, n_classes=3, width=4)
    for stage, dilation in (("layer1", 1), ("layer2", 1), ("layer3", 2), ("layer4", 4)):
        for conv in getattr(model.backbone, stage).modules():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                assert conv.dilation == (dilation, dilation)
                assert conv.padding == (dilation, dilation)
            if isinstance(conv, nn.Conv2d) and stage in ("layer3", "layer4"):
                assert conv.stride == (1, 1)


def test_aspp_is_sum_of_branches_with_rates():
    torch.manual_seed(1)
    aspp = ASPP(6, 4, rates=(1, 2, 3, 5))
    for conv in aspp.branches:  # non-trivial biases so the sum really includes them
        nn.init.normal_(conv.bias)
    x = torch.randn(2, 6, 11, 13)
    expected = sum(F.conv2d(x, c.weight, c.bias, padding=r, dilation=r) for c, r in zip(aspp.branches, (1, 2, 3, 5)))
    assert torch.allclose(aspp(x), expected, atol=1e-6)
    assert [c.dilation[0] for c in aspp.branches] == [1, 2, 3, 5]
    model = DeepLabV2("resnet18", 3, width=4).eval()
    assert [c.dilation[0] for c in model.aspp.branches] == [6, 12, 18, 24]
    with torch.no_grad():
        img = torch.randn(1, 3, 24, 24)
        assert torch.equal(model(img), model.aspp(model.backbone(img)))


def test_frozen_bn_stays_frozen_after_train():
    torch.manual_seed(2)
    model = DeepLabV2("resnet18", 3, width=4, bn="frozen")
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FrozenBatchNorm2d) for m in bns)
    assert all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    before = [m.running_mean.clone() for m in bns]
    x = torch.randn(2, 3, 24, 24) * 3 + 1
    y_train = model(x)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    with torch.no_grad():
        assert torch.allclose(y_train, model.eval()(x), atol=1e-6)

    trainable = DeepLabV2("resnet18", 3, width=4, bn="train").train()
    bn = trainable.backbone.bn1
    assert type(bn) is nn.BatchNorm2d and bn.weight.requires_grad
    trainable(x)
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_msc_outputs_and_max_fusion():
    torch.manual_seed(3)
    base = DeepLabV2("resnet18", 4, width=4, bn="train")
    model = build_deeplab("resnet18", 4, width=4, bn="train", msc_scales=(1.0, 0.5, 0.75))
    assert isinstance(model, MSC) and model.scales == (0.5, 0.75)
    model.base.load_state_dict(base.state_dict())
    x = torch.randn(2, 3, 33, 47)
    model.train()
    outs = model(x)
    assert len(outs) == 4
    assert outs[0].shape[-2:] == (5, 6)
    for out, s in zip(outs[1:3], (0.5, 0.75)):
        xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        assert out.shape[-2:] == (_ceil8(xs.shape[-2]), _ceil8(xs.shape[-1]))
    base.load_state_dict(model.base.state_dict())  # BN statistics moved during the training pass
    model.eval()
    base.eval()
    with torch.no_grad():
        fused = model(x)
        full = base(x)
        parts = [full] + [
            F.interpolate(
                base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)),
                size=full.shape[-2:],
                mode="bilinear",
                align_corners=False,
            )
            for s in (0.5, 0.75)
        ]
    expected = torch.maximum(torch.maximum(parts[0], parts[1]), parts[2])
    assert torch.allclose(fused, expected, atol=1e-6)
    assert fused.shape == full.shape
    assert isinstance(build_deeplab("resnet18", 4, width=4, msc_scales=()), DeepLabV2)


# ---------------------------------------------------------------------------------------------------
# pretrained weights
# ---------------------------------------------------------------------------------------------------


def test_load_torchvision_imagenet_layout(tmp_path, monkeypatch):
    torch.manual_seed(4)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    model = build_deeplab("resnet18", 3, msc_scales=(0.5,))
    report = load_pretrained(model, path, log=lambda s: None)
    assert report["skipped"] == ["fc.weight", "fc.bias"] and report["layout"] == "torchvision"
    assert torch.equal(model.base.backbone.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    assert torch.equal(model.base.backbone.bn1.running_var, tv.bn1.running_var)

    # init: imagenet finds the file only in the torch hub cache and never downloads
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    fresh = DeepLabV2("resnet18", 3)
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        initialise(fresh, "imagenet", log=lambda s: None)
    cached = imagenet_candidates("resnet18")[0]
    cached.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), cached)
    initialise(fresh, "imagenet", log=lambda s: None)
    assert torch.equal(fresh.backbone.conv1.weight, tv.conv1.weight)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        initialise(fresh, "imagenet", tmp_path / "nope.pth")


def _to_deeplab_layout(state: dict) -> dict:
    """Our DeepLabV2 keys -> deeplab-pytorch (Caffe-converted) keys, written independently of the loader."""
    out = {}
    branch = {
        "conv1": "reduce.conv",
        "bn1": "reduce.bn",
        "conv2": "conv3x3.conv",
        "bn2": "conv3x3.bn",
        "conv3": "increase.conv",
        "bn3": "increase.bn",
        "downsample.0": "shortcut.conv",
        "downsample.1": "shortcut.bn",
    }
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "aspp":
            continue  # a COCO-init file has a 91-class fc instead of our ASPP
        if parts[1] in ("conv1", "bn1"):
            new = f"layer1.conv1.{'conv' if parts[1] == 'conv1' else 'bn'}.{parts[2]}"
        else:
            stage, block = int(parts[1][5:]) + 1, int(parts[2]) + 1
            name = ".".join(parts[3:-1])
            new = f"layer{stage}.block{block}.{branch[name]}.{parts[-1]}"
        out[new] = value
    out["fc.weight"] = torch.zeros(91, 8, 1, 1)
    out["fc.bias"] = torch.zeros(91)
    return out


def test_translate_deeplab_key_examples():
    assert translate_deeplab_key("base.layer1.conv1.conv.weight") == "backbone.conv1.weight"
    assert translate_deeplab_key("layer1.conv1.bn.running_var") == "backbone.bn1.running_var"
    assert translate_deeplab_key("layer3.block1.reduce.conv.weight") == "backbone.layer2.0.conv1.weight"
    assert translate_deeplab_key("layer5.block3.increase.bn.bias") == "backbone.layer4.2.bn3.bias"
    assert (
        translate_deeplab_key("module.base.layer2.block1.shortcut.bn.weight") == "backbone.layer1.0.downsample.1.weight"
    )
    assert translate_deeplab_key("scale.layer4.block2.proj.conv.weight") == "backbone.layer3.1.downsample.0.weight"
    assert translate_deeplab_key("base.aspp.c3.bias") == "aspp.branches.3.bias"
    assert translate_deeplab_key("aspp.stages.c0.weight") == "aspp.branches.0.weight"
    assert translate_deeplab_key("fc.weight") is None


def test_load_deeplab_coco_layout_and_errors(tmp_path):
    torch.manual_seed(5)
    source = DeepLabV2("resnet50", 91, width=8, stride_in_1x1=True)
    for p in source.parameters():
        nn.init.normal_(p)
    path = tmp_path / "coco_init.pth"
    torch.save(_to_deeplab_layout(source.state_dict()), path)
    target = build_deeplab("resnet50", 21, width=8, stride_in_1x1=True)
    aspp_before = target.base.aspp.branches[0].weight.clone()
    messages: list[str] = []
    assert initialise(target, "coco", path, log=messages.append)["layout"] == "deeplab"
    assert not any("warning" in m for m in messages)
    load_pretrained(build_deeplab("resnet50", 21, width=8), path, log=messages.append)
    assert "stride_in_1x1=True" in messages[-1]  # Caffe weights into a torchvision-style trunk
    own = target.base.state_dict()
    for k, v in source.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(own[k], v), k
    assert torch.equal(target.base.aspp.branches[0].weight, aspp_before)  # random ASPP kept

    broken = _to_deeplab_layout(source.state_dict())
    broken["layer9.block1.reduce.conv.weight"] = torch.zeros(1)
    del broken["layer3.block2.conv3x3.bn.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="layer9.block1.reduce.conv.weight") as err:
        load_pretrained(target, tmp_path / "broken.pth", log=lambda s: None)
    assert "backbone.layer2.1.bn2.weight" in str(err.value)
    with pytest.raises(ValueError, match="init_path"):
        initialise(target, "coco", None)


# ---------------------------------------------------------------------------------------------------
# optimisation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_param_groups_multipliers(bn):
    model = build_deeplab("resnet18", 4, width=4, bn=bn, msc_scales=(0.5,))
    groups = param_groups(model, lr=1e-3, weight_decay=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "classifier_weight", "classifier_bias"}
    assert math.isclose(by_name["backbone"]["lr"], 1e-3)
    assert math.isclose(by_name["classifier_weight"]["lr"], 1e-2)
    assert math.isclose(by_name["classifier_bias"]["lr"], 2e-2)
    assert by_name["classifier_bias"]["weight_decay"] == 0.0
    assert by_name["backbone"]["weight_decay"] == by_name["classifier_weight"]["weight_decay"] == 5e-4
    aspp = model.base.aspp
    assert {id(p) for p in by_name["classifier_weight"]["params"]} == {id(c.weight) for c in aspp.branches}
    assert {id(p) for p in by_name["classifier_bias"]["params"]} == {id(c.bias) for c in aspp.branches}
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(listed) == trainable
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert (bn_params <= set(listed)) == (bn == "train")
    assert bn_params.isdisjoint(listed) == (bn == "frozen")
    opt = torch.optim.SGD(groups, lr=1e-3, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2, 2e-2])
    # from-scratch override: uniform multipliers, the bias group still without weight decay
    uniform = param_groups(model, lr=1e-3, weight_decay=5e-4, lr_mult=(1, 1, 1))
    assert [g["lr"] for g in uniform] == pytest.approx([1e-3] * 3) and uniform[2]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="lr_mult"):
        param_groups(model, 1e-3, 5e-4, lr_mult=(1, 10))


def test_poly_lr_values():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100) == 0.0
    assert poly_lr(0.01, 150, 100) == 0.0
    assert poly_lr(0.01, 19, 100, step_every=10) == pytest.approx(0.01 * 0.9**0.9)
    assert poly_lr(2.5e-4, 20000 - 1, 20000, power=0.9, step_every=10) == pytest.approx(2.5e-4 * (10 / 20000) ** 0.9)

    model = build_deeplab("resnet18", 2, width=4, msc_scales=())
    opt = torch.optim.SGD(param_groups(model, 0.1, 0.0), lr=0.1)
    sched = PolyLR(opt, max_iter=100, power=0.9, step_every=10)
    seen = []
    for it in range(100):
        seen.append(sched.get_last_lr())
        sched.step()
    assert seen[0] == pytest.approx([0.1, 1.0, 2.0])
    assert seen[9] == seen[0]
    assert seen[10] == pytest.approx([m * 0.1 * 0.9**0.9 for m in (1, 10, 20)])
    assert seen[57] == pytest.approx([m * 0.1 * 0.5**0.9 for m in (1, 10, 20)])
    state = sched.state_dict()
    opt2 = torch.optim.SGD(param_groups(model, 0.1, 0.0), lr=0.1)
    sched2 = PolyLR(opt2, max_iter=1)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------------


def test_ce_ignores_255_exactly():
    torch.manual_seed(6)
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    labels = torch.randint(0, 4, (2, 5, 6))
    labels[0, :2] = 255
    labels[1, :, 3] = 255
    valid = labels != 255
    flat_logits = logits.permute(0, 2, 3, 1)[valid]
    expected = F.cross_entropy(flat_logits, labels[valid])
    loss = ce_loss(logits, labels)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    ignored_grad = logits.grad.permute(0, 2, 3, 1)[~valid]
    assert torch.count_nonzero(ignored_grad) == 0
    # changing logits at ignored pixels cannot change the loss
    other = logits.detach().clone()
    other.permute(0, 2, 3, 1)[~valid] = 100.0
    assert torch.equal(ce_loss(other, labels), loss.detach())


@pytest.mark.parametrize("fn", [ce_loss, balanced_ce])
def test_all_ignored_gives_zero_loss_and_grad(fn):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), 255)
    loss = fn(logits, labels)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_balanced_ce_matches_formula_on_hand_example():
    # one image, 3 classes, 4 pixels: bg, bg, fg(class 2), ignore
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [5.0, -5.0, 0.0]])
    logits = logits.t().reshape(1, 3, 1, 4)
    labels = torch.tensor([[[0, 0, 2, 255]]])

    def nll(row, k):
        return -math.log(math.exp(row[k]) / sum(math.exp(v) for v in row))

    bg = (nll([2, 0, 0], 0) + nll([0, 1, 0], 0)) / 2
    fg = nll([0, 0, 3], 2)
    assert balanced_ce(logits, labels).item() == pytest.approx((bg + fg) / 2, rel=1e-6)
    assert ce_loss(logits, labels).item() == pytest.approx((2 * bg + fg) / 3, rel=1e-6)
    # no foreground in the batch: the background mean alone, finite
    only_bg = torch.tensor([[[0, 0, 255, 255]]])
    assert balanced_ce(logits, only_bg).item() == pytest.approx(bg, rel=1e-6)
    only_fg = torch.tensor([[[255, 255, 2, 255]]])
    assert balanced_ce(logits, only_fg).item() == pytest.approx(fg, rel=1e-6)


def test_msc_loss_is_sum_with_resized_labels():
    torch.manual_seed(7)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[:, 0] = 255
    outs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 6, 6), torch.randn(2, 3, 8, 8)]
    total = segmentation_loss(outs, labels, "ce")
    expected = sum(ce_loss(o, resize_labels(labels, o.shape[-2:])) for o in outs)
    assert torch.allclose(total, expected)
    small = resize_labels(labels, (4, 4))
    assert torch.equal(small, labels[:, 1::2, 1::2])  # pixel-centre sampling, like PIL NEAREST
    assert torch.equal(segmentation_loss(outs[0], labels, "balanced_ce"), balanced_ce(outs[0], labels))
    with pytest.raises(ValueError, match="focal"):
        segmentation_loss(outs, labels, "focal")
