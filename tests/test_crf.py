"""Tests for wsss.crf: unary construction, CRF image, CRF behaviour, labels, confidence, label CRF, parallel runs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydensecrf import utils as pdc_utils

from wsss import crf
from wsss.images import ImageDecodeError

# ------------------------------------------------------------------------------------------------
# helpers


def _square_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """64x64 dark image with a bright 24x24 square at rows 20..43, cols 16..39 (slight noise); and its mask."""
    rng = np.random.default_rng(seed)
    image = np.full((64, 64, 3), 40, dtype=np.int64)
    image[20:44, 16:40] = (200, 180, 60)
    image = np.clip(image + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
    square = np.zeros((64, 64), dtype=bool)
    square[20:44, 16:40] = True
    return image, square


def _overshooting_cam() -> np.ndarray:
    """(1, 8, 8) patch-resolution CAM (8 px patches) covering patch rows 2..5, cols 1..5: wider than the square."""
    cam = np.zeros((1, 8, 8), dtype=np.float32)
    cam[0, 2:6, 1:6] = 0.8
    return cam


def _small_items(n: int) -> list[tuple[str, np.ndarray, np.ndarray, list[int]]]:
    """n tiny structured images with two overshooting class CAMs each."""
    rng = np.random.default_rng(7)
    items = []
    for i in range(n):
        image = np.full((40, 48, 3), 30, dtype=np.uint8)
        r, c = rng.integers(4, 16, 2)
        image[r : r + 14, c : c + 16] = (220, 60, 60)
        image[24:36, 30:44] = (60, 200, 90)
        cams = rng.random((2, 5, 6)).astype(np.float32) * 0.3
        cams[0, r // 8 : (r + 14) // 8 + 1, c // 8 : (c + 16) // 8 + 1] += 0.6
        cams[1, 3:5, 3:6] += 0.6
        items.append((f"img_{i:03d}", image, cams, [int(i % 5), 14]))
    return items


# ------------------------------------------------------------------------------------------------
# wrap and CRF image


def test_wrap_to_uint8_examples_from_spec():
    out = crf.wrap_to_uint8(np.array([-5.5, 0.0, 300.2, -0.7, 255.9, -256.0, -257.3], dtype=np.float32))
    assert out.dtype == np.uint8
    assert out.tolist() == [251, 0, 44, 0, 255, 0, 255]


def test_wrap_to_uint8_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        crf.wrap_to_uint8(np.array([1.0, np.nan]))


def test_crf_image_faithful_reproduces_wrapped_mean_subtraction():
    # Pixel values chosen so that every channel hits a negative, a small positive and a large value.
    image = np.array([[[0, 0, 0], [255, 255, 255]], [[122, 116, 104], [123, 117, 105]]], dtype=np.uint8)
    out = crf.crf_image(image, "wrapped_bgr_mean")
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"] and out.shape == image.shape
    # Expected by hand: BGR order, minus (104.008, 116.669, 122.675), truncate, modulo 256.
    # (0,0,0):      -104.008 -> -104 -> 152; -116.669 -> -116 -> 140; -122.675 -> -122 -> 134
    # (255,...):    150.992 -> 150; 138.331 -> 138; 132.325 -> 132
    # RGB(122,116,104) = BGR(104,116,122): -0.008 -> 0; -0.669 -> 0; -0.675 -> 0
    # RGB(123,117,105) = BGR(105,117,123): 0.992 -> 0; 0.331 -> 0; 0.325 -> 0
    expected = np.array([[[152, 140, 134], [150, 138, 132]], [[0, 0, 0], [0, 0, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_crf_image_faithful_matches_float_reference_on_random_pixels():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    # every value in every channel, with the channels shuffled independently
    every = np.stack([rng.permutation(256) for _ in range(3)], axis=-1).astype(np.uint8).reshape(16, 16, 3)
    image = np.concatenate([image.reshape(-1, 3), every.reshape(-1, 3)]).reshape(-1, 1, 3)
    reference = image[..., ::-1].astype(np.float64) - np.array(crf.BGR_MEAN)
    expected = np.mod(np.trunc(reference), 256).astype(np.uint8)
    np.testing.assert_array_equal(crf.crf_image(image, "wrapped_bgr_mean"), expected)


def test_crf_image_rgb_is_identity_and_bad_mode_raises():
    image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crf.crf_image(image, "rgb"), image)
    with pytest.raises(ValueError, match="image_mode"):
        crf.crf_image(image, "bgr")
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        crf.crf_image(image.astype(np.float32), "rgb")


# ------------------------------------------------------------------------------------------------
# upsampling, probability stack, unary


def test_upsample_cams_matches_cv2_per_class_and_casts_to_float16():
    import cv2

    cams = np.random.default_rng(1).random((2, 3, 4)).astype(np.float32)
    faithful = crf.upsample_cams(cams, (6, 10))
    clean = crf.upsample_cams(cams, (6, 10), faithful=False)
    assert faithful.shape == (2, 6, 10) and faithful.dtype == np.float16 and clean.dtype == np.float32
    for k in range(2):
        expected = cv2.resize(cams[k], (10, 6), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(clean[k], expected)
        np.testing.assert_array_equal(faithful[k], expected.astype(np.float16))


def test_probability_stack_exact_numbers_float16():
    cams = np.array([[[0.25, 1.0], [0.0, 0.5]], [[0.75, 0.5], [0.0, 0.125]]], dtype=np.float16)
    probs = crf.probability_stack(cams)
    assert probs.dtype == np.float16 and probs.shape == (3, 2, 2)
    # background = 1 - max over classes, first, not renormalised
    np.testing.assert_array_equal(probs[0], np.array([[0.25, 0.0], [1.0, 0.5]], dtype=np.float16))
    np.testing.assert_array_equal(probs[1:], cams)
    squared = crf.probability_stack(cams, alpha=2.0)
    assert squared.dtype == np.float16
    np.testing.assert_array_equal(squared[0], np.array([[0.0625, 0.0], [1.0, 0.25]], dtype=np.float16))
    # not renormalised: the column sums differ from 1
    assert probs.astype(np.float32).sum(axis=0)[0, 0] == pytest.approx(1.25)


def test_unary_from_probabilities_exact_and_equal_to_pydensecrf():
    probs = np.array([[[1.0, 0.5]], [[0.0, 0.25]]], dtype=np.float32)
    unary = crf.unary_from_probabilities(probs)
    assert unary.shape == (2, 2) and unary.dtype == np.float32 and unary.flags["C_CONTIGUOUS"]
    expected = -np.log(np.array([[1.0, 0.5], [1e-5, 0.25]], dtype=np.float32))
    np.testing.assert_array_equal(unary, expected)
    rng = np.random.default_rng(2)
    for dtype in (np.float16, np.float32, np.float64):
        p = rng.random((3, 6, 5)).astype(dtype)
        p[0, 0, :3] = 0  # clipped entries
        np.testing.assert_array_equal(crf.unary_from_probabilities(p), pdc_utils.unary_from_softmax(p))


def test_unary_from_labels_equals_pydensecrf_zero_unsure_false():
    labels = np.random.default_rng(4).integers(0, 4, (5, 7))
    ours = crf.unary_from_labels(labels, 4, 0.7)
    np.testing.assert_array_equal(ours, pdc_utils.unary_from_labels(labels, 4, gt_prob=0.7, zero_unsure=False))
    assert ours[labels.reshape(-1)[0], 0] == np.float32(-np.log(0.7))
    with pytest.raises(ValueError, match="label indices"):
        crf.unary_from_labels(labels, 3, 0.7)


# ------------------------------------------------------------------------------------------------
# CRF behaviour


@pytest.mark.parametrize("image_mode", ["wrapped_bgr_mean", "rgb"])
def test_crf_snaps_overshooting_cam_to_square_edge(image_mode):
    image, square = _square_scene()
    cams = _overshooting_cam()
    cfg = crf.CrfConfig(image_mode=image_mode)
    upsampled = crf.upsample_cams(cams, square.shape).astype(np.float32)[0]
    cam_foreground = upsampled > 1 - upsampled  # what argmax without CRF would say
    assert (cam_foreground & ~square).sum() > 300  # the CAM overshoots the square
    labels, confidence = crf.crf_one_image(image, cams, [2], cfg)
    assert labels.dtype == np.uint8 and confidence.dtype == np.float16
    assert set(np.unique(labels).tolist()) == {0, 3}
    np.testing.assert_array_equal(labels == 3, square)
    assert float(confidence.max()) <= 1.0 and float(confidence.min()) > 0.5


def test_dense_crf_returns_normalised_q():
    image, _ = _square_scene()
    probs = crf.probability_stack(crf.upsample_cams(_overshooting_cam(), (64, 64)))
    q = crf.dense_crf(crf.crf_image(image, "rgb"), crf.unary_from_probabilities(probs), crf.CLIP_ES_PARAMS)
    assert q.shape == (2, 64, 64) and q.dtype == np.float32 and q.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        crf.dense_crf(image, np.zeros((2, 10), np.float32), crf.CLIP_ES_PARAMS)


# ------------------------------------------------------------------------------------------------
# labels, confidence, training labels


def test_labels_for_non_contiguous_keys():
    q = np.zeros((3, 2, 3), dtype=np.float32)
    q[0] = [[0.9, 0.1, 0.2], [0.3, 0.2, 0.1]]
    q[1] = [[0.05, 0.8, 0.3], [0.3, 0.7, 0.1]]
    q[2] = [[0.05, 0.1, 0.5], [0.4, 0.1, 0.8]]
    labels, confidence = crf.labels_and_confidence(q, np.array([2, 14]))
    assert labels.dtype == np.uint8 and confidence.dtype == np.float16
    assert labels.tolist() == [[0, 3, 15], [15, 3, 15]]
    np.testing.assert_array_equal(confidence, q.max(axis=0).astype(np.float16))
    with pytest.raises(ValueError, match="expected"):
        crf.labels_and_confidence(q, [2])
    with pytest.raises(ValueError, match="duplicate"):
        crf.labels_and_confidence(q, [2, 2])


def test_training_labels_threshold_on_float16_values():
    below = np.float16(0.9497)  # 0.94970703..., the float16 just below 0.95
    above = np.float16(0.9502)  # 0.95019531..., the float16 just above 0.95
    assert float(below) < 0.95 < float(above)
    labels = np.array([[3, 15, 0, 3]], dtype=np.uint8)
    confidence = np.array([[below, above, below, 1.0]], dtype=np.float16)
    out = crf.training_labels(labels, confidence, 0.95)
    assert out.tolist() == [[255, 15, 255, 3]]
    assert labels.tolist() == [[3, 15, 0, 3]]  # input untouched
    # strict comparison: a confidence equal to the threshold is kept
    assert crf.training_labels(labels, confidence, float(above)).tolist() == [[255, 15, 255, 3]]
    # 255 exactly where confidence < threshold, on random data
    rng = np.random.default_rng(5)
    conf = rng.random((30, 30)).astype(np.float16)
    lab = rng.integers(0, 21, (30, 30)).astype(np.uint8)
    out = crf.training_labels(lab, conf, 0.6)
    low = conf.astype(np.float64) < 0.6
    assert np.all(out[low] == 255) and np.array_equal(out[~low], lab[~low])


def test_crf_one_image_prob_mode_keys_and_confidence_rule():
    image, square = _square_scene()
    labels, confidence = crf.crf_one_image(image, _overshooting_cam(), np.array([14]), {"image_mode": "rgb"})
    assert set(np.unique(labels).tolist()) == {0, 15}
    final = crf.training_labels(labels, confidence, 0.95)
    assert np.array_equal(final == 255, confidence.astype(np.float64) < 0.95)


def test_crf_one_image_rejects_bad_input_with_image_id():
    image, _ = _square_scene()
    with pytest.raises(ValueError, match="image 2007_000032"):
        crf.crf_one_image(image, _overshooting_cam(), [1, 2], image_id="2007_000032")
    bad = _overshooting_cam()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image x.*NaN"):
        crf.crf_one_image(image, bad, [1], image_id="x")


# ------------------------------------------------------------------------------------------------
# label-unary mode (SemPLeS)


def test_seeds_from_cams_background_threshold_and_ties():
    cams = np.array([[[0.2, 0.5, 0.43]], [[0.6, 0.1, 0.0]]], dtype=np.float32)
    seeds = crf.seeds_from_cams(cams, [2, 14], 0.43)
    # max 0.6 -> class 14+1; 0.5 -> class 2+1; 0.43 == t -> background (ties go to background)
    assert seeds.tolist() == [[15, 3, 0]]


def test_label_crf_only_returns_seed_classes():
    image, square = _square_scene()
    seeds = np.zeros((64, 64), dtype=np.uint8)
    seeds[14:50, 10:46] = 3  # overshooting seed for class value 3
    seeds[0:6, 0:6] = 15  # a small blob of a second class in the background
    labels = crf.label_crf(image, seeds, gt_prob=0.7, params=crf.SEMPLES_VOC_PARAMS)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, 3, 15}
    # explicit 21-label space (WeakTr's default n_labels): still only seed classes come out
    labels21 = crf.label_crf(image, seeds, n_labels=21)
    assert set(np.unique(labels21).tolist()) <= {0, 3, 15}
    # the refined square is closer to the true square than the seed
    assert ((labels == 3) != square).sum() < ((seeds == 3) != square).sum()
    with pytest.raises(ValueError, match="not in the label space"):
        crf.label_crf(image, seeds, label_values=[0, 3])


def test_crf_one_image_label_mode():
    image, square = _square_scene()
    cfg = crf.CrfConfig.from_dict({"mode": "label_unary", "bg_threshold": 0.43})
    assert cfg.image_mode == "rgb" and cfg.params == crf.SEMPLES_VOC_PARAMS and cfg.confidence == 0.0
    labels, confidence = crf.crf_one_image(image, _overshooting_cam(), [2], cfg)
    assert set(np.unique(labels).tolist()) <= {0, 3}
    assert confidence.dtype == np.float16
    # no 255 in label mode with its default threshold
    assert not np.any(crf.training_labels(labels, confidence, cfg.confidence) == 255)


# ------------------------------------------------------------------------------------------------
# configuration


def test_config_from_dict_nested_and_presets():
    cfg = crf.CrfConfig.from_dict(
        {
            "iters": 5,
            "gaussian": {"sxy": 2, "compat": 3},
            "bilateral": {"srgb": 7},
            "image_mode": "rgb",
            "confidence": 0.9,
        }
    )
    assert cfg.params == crf.CrfParams(
        iters=5, gaussian_sxy=2, gaussian_compat=3, bilateral_sxy=67, bilateral_srgb=7, bilateral_compat=4
    )
    assert cfg.mode == "prob_unary" and cfg.confidence == 0.9
    coco = crf.CrfConfig.from_dict({"mode": "label_unary", "preset": "semples_coco"})
    assert coco.params == crf.SEMPLES_COCO_PARAMS
    assert crf.CrfParams.from_dict({"iters": 3, "bilateral_sxy": 50}).bilateral_sxy == 50
    with pytest.raises(ValueError, match="bogus"):
        crf.CrfConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="crf.gaussian.srgb"):
        crf.CrfParams.from_dict({"gaussian": {"srgb": 1}})
    with pytest.raises(ValueError, match="crf.iters"):
        crf.CrfParams(iters=0)
    with pytest.raises(ValueError, match="crf.mode"):
        crf.CrfConfig(mode="soft")


# ------------------------------------------------------------------------------------------------
# many images


def test_crf_many_two_workers_equal_one_worker_and_keep_order(tmp_path):
    import cv2

    items = _small_items(6)
    # one item as a file path, to exercise loading inside the worker
    path = tmp_path / "img_002.png"
    cv2.imwrite(str(path), items[2][1][..., ::-1])
    items[2] = (items[2][0], str(path), items[2][2], items[2][3])
    cfg = crf.CrfConfig()
    stream = io.StringIO()
    serial = list(crf.crf_many(items, cfg, workers=1, progress_stream=None))
    parallel = list(
        crf.crf_many(iter(items), cfg, workers=2, progress_stream=stream, total=len(items), max_in_flight=3)
    )
    assert [r[0] for r in serial] == [it[0] for it in items] == [r[0] for r in parallel]
    for (_, lab1, conf1), (_, lab2, conf2) in zip(serial, parallel):
        np.testing.assert_array_equal(lab1, lab2)
        np.testing.assert_array_equal(conf1, conf2)
    assert "6/6" in stream.getvalue()
    # same as calling the per-image function directly
    direct = crf.crf_one_image(items[0][1], items[0][2], items[0][3], cfg)
    np.testing.assert_array_equal(serial[0][1], direct[0])


def test_crf_many_missing_image_names_id_and_path(tmp_path):
    items = _small_items(1)
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageDecodeError, match="img_000.*nope.jpg"):
        list(
            crf.crf_many([(items[0][0], str(missing), items[0][2], items[0][3])], None, workers=1, progress_stream=None)
        )
    with pytest.raises(ValueError, match="workers"):
        list(crf.crf_many(items, None, workers=0, progress_stream=None))
