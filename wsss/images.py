"""One image decoder for every stage: any file PIL reads becomes the same RGB uint8 pixels.

CAMs, the CRF, the segmenter, SemPLeS and figures all decode through :func:`decode_image`, so no two
stages see different pixels. The rules (documented in ``docs/reliability.md``):

- the stored pixel grid is used as it is: EXIF orientation is ignored, because ground-truth masks and
  dataset sizes (VOC's XML, COCO's JSON) refer to the stored grid;
- 8-bit modes (1, L, P, RGB, CMYK, YCbCr, ...) convert with PIL's standard conversions;
- alpha (RGBA, LA, PA, and palette or greyscale transparency) is composited onto white;
- 16-bit and 32-bit integer greyscale (I;16*, I) are read on the 16-bit scale: values clipped to
  0..65535, then mapped to 0..255 by rounding v / 257;
- floating point greyscale (F) is read on the 0..1 scale: clipped, times 255, rounded.

For RGB JPEG and PNG files this gives exactly the pixels OpenCV's ``imread`` gives (the official
CLIP-ES CRF's decoder), so faithfulness to the reference is unaffected.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ImageDecodeError", "decode_image", "to_rgb"]

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_INTEGER_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class ImageDecodeError(ValueError):
    """An image file that is missing, truncated or not an image; the message names the file."""


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Flatten (H, W, 4) uint8 RGBA onto a white background, rounding to nearest."""
    rgb = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:].astype(np.uint32)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of a decoded PIL image, by the module's documented rules."""
    mode = image.mode
    if mode in _INTEGER_GREY_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return _grey_to_rgb(((values * 255 + 32767) // 65535).astype(np.uint8))
    if mode == "F":
        values = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64)), 0.0, 1.0)
        return _grey_to_rgb(np.rint(values * 255).astype(np.uint8))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Fully decode an image file to (H, W, 3) uint8 RGB on its stored grid; ImageDecodeError names the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # the whole file: a truncated one fails here, not in a later stage
            return np.array(to_rgb(image), order="C")  # a writable copy (pydensecrf writes into its buffers)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{path}: cannot decode image ({error})") from error
