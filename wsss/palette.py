"""PASCAL VOC colour map for palette (mode "P") label PNGs."""

from __future__ import annotations

from functools import lru_cache


def _bit(value: int, index: int) -> int:
    """Bit `index` of `value` (0 or 1)."""
    return (value >> index) & 1


@lru_cache(maxsize=1)
def _voc_palette_tuple() -> tuple[int, ...]:
    """The 256-entry VOC colour map as a flat (r, g, b, r, g, b, ...) tuple."""
    flat: list[int] = []
    for label in range(256):
        red = green = blue = 0
        code = label
        # Each group of three label bits feeds one bit of R, G and B, filled from the most
        # significant colour bit downwards, so that small labels get well separated colours.
        for shift in range(7, -1, -1):
            red |= _bit(code, 0) << shift
            green |= _bit(code, 1) << shift
            blue |= _bit(code, 2) << shift
            code >>= 3
        flat.extend((red, green, blue))
    return tuple(flat)


def voc_palette() -> list[int]:
    """The standard VOC colour map as 768 ints (label 0 black, 15 person (192, 128, 128), 255 (224, 224, 192))."""
    return list(_voc_palette_tuple())
