"""The one image decoder: every PIL mode gives the same pixels to the CAM stage, the CRF and the trainers."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from wsss import crf
from wsss.clip.transform import preprocess_file, preprocess_image
from wsss.images import ImageDecodeError, decode_image
from wsss.methods.semples.data import load_rgb

H, W = 21, 34


def _base() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(cv2.GaussianBlur((rng.random((H, W, 3)) * 255).astype(np.uint8), (5, 5), 1.5))


def _sixteen_bit() -> np.ndarray:
    values = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    values[0, :3] = (0, 128 * 257, 65535)
    return values


# mode -> (image in that mode, a file format that stores the mode as it is)
MODES = {
    "1": (lambda: _base().convert("1"), "PNG"),
    "L": (lambda: _base().convert("L"), "PNG"),
    "P": (lambda: _base().quantize(colors=16), "PNG"),
    "RGB": (lambda: _base(), "JPEG"),
    "RGBA": (lambda: _with_alpha(_base().convert("RGBA")), "PNG"),
    "CMYK": (lambda: _base().convert("CMYK"), "JPEG"),
    "I;16": (lambda: Image.fromarray(_sixteen_bit()), "PNG"),
    "I": (lambda: Image.fromarray(_sixteen_bit().astype(np.int32)), "TIFF"),
    "F": (lambda: Image.fromarray(np.linspace(-0.5, 1.5, H * W).reshape(H, W).astype(np.float32)), "TIFF"),
    "LA": (lambda: _with_alpha(_base().convert("LA")), "PNG"),
    "PA": (lambda: _with_alpha(_base().quantize(colors=16).convert("PA")), "TIFF"),
}


def _with_alpha(image: Image.Image) -> Image.Image:
    """Left half opaque, right half fully transparent."""
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:, W // 2 :] = 0
    image.putalpha(Image.fromarray(alpha))
    return image


def _saved(tmp_path, mode: str):
    make, fmt = MODES[mode]
    image = make()
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, format=fmt)
    with Image.open(path) as reread:
        assert reread.mode == mode, f"the {fmt} file does not keep mode {mode}"
    return path


def _crf_pixels(path, monkeypatch) -> np.ndarray:
    """The image the CRF stage works on when crf_many gets a path (as the crf rule gives it)."""
    seen = {}

    def capture(image, cams, keys, cfg, image_id=""):
        seen["image"] = image
        return np.zeros(image.shape[:2], np.uint8), np.zeros(image.shape[:2], np.float32)

    monkeypatch.setattr(crf, "crf_one_image", capture)
    list(crf.crf_many([("x", str(path), np.zeros((1, 2, 2), np.float32), np.array([0]))], None, workers=1,
                      progress_stream=None))
    return seen["image"]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_gives_the_cam_stage_and_the_crf_the_same_pixels(tmp_path, monkeypatch, mode):
    path = _saved(tmp_path, mode)
    pixels = decode_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (H, W, 3)
    crf_pixels = _crf_pixels(path, monkeypatch)
    np.testing.assert_array_equal(crf_pixels, pixels)
    # CLIP's input is the bicubic resize of exactly those RGB pixels (a palette image is no longer resized
    # nearest-neighbour, a 16-bit one no longer clipped to white)
    cam_input = preprocess_file(path, 16, scale=2.0)
    assert torch.equal(cam_input, preprocess_image(Image.fromarray(crf_pixels), 16, scale=2.0))
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), pixels)  # SemPLeS' training and CAM images


def test_documented_conversions(tmp_path):
    sixteen = decode_image(_saved(tmp_path, "I;16"))
    assert sixteen[0, :3, 0].tolist() == [0, 128, 255]  # v / 257, rounded: the full 16-bit range
    np.testing.assert_array_equal(decode_image(_saved(tmp_path, "I")), sixteen)
    assert sixteen.std() > 50  # a 16-bit ramp stays a ramp (PIL's own conversion clips it to white)
    floats = decode_image(_saved(tmp_path, "F"))
    assert floats[0, 0, 0] == 0 and floats[-1, -1, 0] == 255  # clipped to 0..1, then times 255
    rgba = decode_image(_saved(tmp_path, "RGBA"))
    assert (rgba[:, W // 2 :] == 255).all()  # transparent: white
    np.testing.assert_array_equal(rgba[:, : W // 2], np.asarray(_base())[:, : W // 2])  # opaque: as stored
    grey_alpha = decode_image(_saved(tmp_path, "LA"))
    assert (grey_alpha[:, W // 2 :] == 255).all()
    assert (grey_alpha[..., 0] == grey_alpha[..., 2]).all()
    palette = decode_image(_saved(tmp_path, "P"))
    with Image.open(tmp_path / "image.png") as image:
        np.testing.assert_array_equal(palette, np.asarray(image.convert("RGB")))


def test_rgb_jpeg_pixels_equal_opencv_the_reference_crf_decoder(tmp_path):
    path = _saved(tmp_path, "RGB")
    reference = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]
    np.testing.assert_array_equal(decode_image(path), reference)


def test_exif_orientation_is_ignored(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    _base().save(path, format="JPEG", exif=exif.tobytes())
    assert decode_image(path).shape == (H, W, 3)  # the stored grid, which ground truth and dataset sizes use


def test_truncated_and_missing_files_name_the_file(tmp_path):
    path = _saved(tmp_path, "RGB")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        decode_image(truncated)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageDecodeError, match="text.png"):
        decode_image(tmp_path / "text.png")
    with pytest.raises(ImageDecodeError, match="image not found.*absent.png"):
        decode_image(tmp_path / "absent.png")


def test_decoded_pixels_are_a_writable_array(tmp_path):
    pixels = decode_image(_saved(tmp_path, "RGB"))
    assert pixels.flags.writeable and pixels.flags.c_contiguous  # pydensecrf needs both
