"""Procedural VOC-formatted multi-label demo dataset ("demo world") with exact ground truth.

Every scene is one background texture with 1..max_objects object classes drawn on it. Object
silhouettes are rasterised at ``SUPERSAMPLE``x resolution into a per-object *part map*; the image
is composited from the per-pixel part coverages (area averaging, so edges are antialiased) and the
label map takes, per final pixel, the instance that covers most of that pixel's sub-samples. Image
and mask are thus two views of the same high-resolution instance map and agree exactly.

``render_scene`` is pure (numpy arrays in memory); ``generate_demo_world`` writes the PASCAL VOC
2012 layout (JPEGImages, SegmentationClass, Annotations, ImageSets/Segmentation) plus
``captions.tsv`` and ``world.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

from wsss.atomic import atomic_output
from wsss.palette import voc_palette  # noqa: F401  (re-exported: the demo world's PNG palette)

GENERATOR_VERSION = "1.0"

DEMO_CLASSES: tuple[str, ...] = ("aeroplane", "bird", "boat", "car", "cow", "person")
DEMO_BACKGROUNDS: tuple[str, ...] = ("grass", "water", "sky", "brick wall", "road", "sand")

# P(background | first object class of the image); rows sum to 1, order of DEMO_BACKGROUNDS.
COOCCURRENCE: dict[str, tuple[float, ...]] = {
    #              grass water  sky   brick road  sand
    "aeroplane": (0.06, 0.03, 0.80, 0.01, 0.08, 0.02),
    "bird":      (0.25, 0.25, 0.35, 0.03, 0.02, 0.10),
    "boat":      (0.03, 0.85, 0.01, 0.01, 0.02, 0.08),
    "car":       (0.08, 0.02, 0.02, 0.12, 0.70, 0.06),
    "cow":       (0.80, 0.03, 0.01, 0.04, 0.06, 0.06),
    "person":    (0.20, 0.10, 0.10, 0.20, 0.20, 0.20),
}

SPLITS: tuple[str, ...] = ("train", "val", "clip_pretrain")
ID_PREFIX = "2026"
SUPERSAMPLE = 4            # sub-samples per pixel side for antialiasing and label voting
MIN_CLASS_PIXELS = 40      # visible pixels each named class keeps after occlusion and borders
MIN_INSTANCE_PIXELS = 20   # the same per <object>, so no XML object is invisible
MAX_SCENE_TRIES = 200

_RGB = tuple[float, float, float]


# ----------------------------------------------------------------------------------- noise helpers

def _value_noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
    """Smooth value noise in [0, 1] with lattice spacing (cell_y, cell_x) pixels."""
    gh = int(np.ceil(h / cell_y)) + 2
    gw = int(np.ceil(w / cell_x)) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    oy, ox = rng.random(2) * 0.999  # random lattice phase so textures do not align with (0, 0)
    y = np.arange(h, dtype=np.float32) / cell_y + oy
    x = np.arange(w, dtype=np.float32) / cell_x + ox
    y0 = y.astype(np.int64)
    x0 = x.astype(np.int64)
    fy = y - y0
    fx = x - x0
    fy = (fy * fy * (3 - 2 * fy))[:, None]  # smoothstep hides the lattice
    fx = fx * fx * (3 - 2 * fx)
    # separable: interpolate the few lattice rows along x first, then along y
    left = grid[:, x0]
    rows = left + (grid[:, x0 + 1] - left) * fx
    top = rows[y0]
    return top + (rows[y0 + 1] - top) * fy


def _fbm(rng: np.random.Generator, h: int, w: int, cells: Sequence[float], aniso: float = 1.0) -> np.ndarray:
    """Fractal sum of value-noise octaves (cell sizes given), normalised to [0, 1]."""
    total = np.zeros((h, w), np.float32)
    weight = 0.0
    for cell in cells:
        amp = float(cell) ** 0.7  # coarse octaves dominate
        total += amp * _value_noise(rng, h, w, cell, cell * aniso)
        weight += amp
    return total / weight


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float = 18.0,
            chroma: float | None = None) -> np.ndarray:
    """Colour with a shared brightness shift (sd 0.6 * amount) and per-channel jitter (sd chroma)."""
    base = np.asarray(rgb, np.float32)
    chroma = amount * 0.5 if chroma is None else chroma
    return np.clip(base + rng.normal(0.0, amount * 0.6) + rng.normal(0.0, chroma, 3), 0, 255)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours a and b with weight t (HxW) towards b."""
    return a + (b - a) * t[..., None]


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 ramp of x between e0 and e1."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# ------------------------------------------------------------------------------------- backgrounds

def _bg_grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Green blades (vertically stretched noise) with lighter and dry patches."""
    dark = _jitter(rng, (45, 95, 35))
    light = _jitter(rng, (120, 165, 60))
    patches = _fbm(rng, h, w, (24, 12))
    blades = _value_noise(rng, h, w, 5.0, 0.9)  # tall thin cells read as grass blades
    t = np.clip(0.55 * patches + 0.65 * blades - 0.1, 0, 1)
    img = _mix(dark, light, t)
    dry = _smoothstep(0.6, 0.85, _fbm(rng, h, w, (30, 15)))
    return _mix(img, _jitter(rng, (150, 150, 80)), 0.35 * dry)


def _bg_water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blue water: warped horizontal wave bands, depth gradient and white glints."""
    deep = _jitter(rng, (25, 70, 120))
    shallow = _jitter(rng, (55, 120, 160))
    yy = np.arange(h, dtype=np.float32)[:, None]
    warp = _fbm(rng, h, w, (20, 10))
    period = rng.uniform(5.0, 9.0)
    waves = 0.5 + 0.5 * np.sin(2 * np.pi * (yy / period + 1.6 * warp))
    depth = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None] * rng.uniform(0.2, 0.6)
    img = _mix(deep, shallow, np.clip(0.7 * waves * (0.6 + 0.4 * warp) + depth - 0.15, 0, 1))
    glints = _smoothstep(0.68, 0.9, _value_noise(rng, h, w, 1.5, 9.0)) * waves  # flat sun glints
    return _mix(img, np.array([225, 240, 250], np.float32), 0.8 * glints)


def _bg_sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blue vertical gradient with soft, horizontally stretched clouds."""
    top = _jitter(rng, (70, 130, 210), 14)
    horizon = _jitter(rng, (165, 200, 235), 10)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    img = _mix(top, horizon, t ** rng.uniform(0.7, 1.5))
    clouds = _fbm(rng, h, w, (40, 20, 10, 5), aniso=rng.uniform(1.5, 3.0))
    cover = rng.uniform(0.45, 0.75)  # higher threshold -> fewer clouds
    return _mix(img, _jitter(rng, (245, 245, 248), 6), 0.95 * _smoothstep(cover, cover + 0.15, clouds))


def _bg_brick_wall(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Running-bond red bricks with per-brick tone, grain and light mortar joints."""
    bh = int(rng.integers(7, 12))
    bw = int(rng.integers(15, 26))
    mortar_w = 1 + int(rng.random() < 0.3)
    yy = np.arange(h)[:, None] + int(rng.integers(0, bh))
    xx = np.arange(w)[None, :] + int(rng.integers(0, bw))
    row = yy // bh
    shift = (row % 2) * (bw // 2)  # running bond: every other row offset by half a brick
    col = (xx + shift) // bw
    base = _jitter(rng, (150, 65, 45), 20)
    n_rows = int(row.max()) + 1
    n_cols = int(col.max()) + 1
    tones = base + rng.normal(0.0, 14.0, (n_rows, n_cols, 1)) + rng.normal(0.0, 6.0, (n_rows, n_cols, 3))
    img = tones[np.broadcast_to(row, (h, w)), col].astype(np.float32)
    grain = _value_noise(rng, h, w, 1.3, 1.3) - 0.5
    img = img * (1.0 + 0.18 * grain[..., None])
    mortar = ((yy % bh) < mortar_w) | (((xx + shift) % bw) < mortar_w)
    mortar_rgb = _jitter(rng, (185, 180, 170), 12)
    return np.where(mortar[..., None], mortar_rgb * (1.0 + 0.1 * grain[..., None]), img)


def _bg_road(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Grainy grey asphalt with a dashed white or yellow lane marking."""
    base = _jitter(rng, (88, 88, 92), 18, chroma=2.5)  # asphalt stays grey
    coarse = _fbm(rng, h, w, (25, 12)) - 0.5
    grain = rng.random((h, w), dtype=np.float32) - 0.5
    img = base * (1.0 + 0.25 * coarse[..., None] + 0.22 * grain[..., None])
    # a dashed lane marking, horizontal or vertical
    vertical = rng.random() < 0.5
    length = w if not vertical else h
    across = h if not vertical else w
    pos = rng.uniform(0.2, 0.8) * across
    thick = rng.uniform(1.5, 3.0)
    dash = rng.uniform(10, 18)
    gap = rng.uniform(6, 12)
    along = np.arange(length, dtype=np.float32) + rng.uniform(0, dash + gap)
    on = ((along % (dash + gap)) < dash).astype(np.float32)
    dist = np.abs(np.arange(across, dtype=np.float32) + 0.5 - pos)
    line = np.clip(thick / 2 + 0.5 - dist, 0, 1)[:, None] * on[None, :]
    if vertical:
        line = line.T
    paint = _jitter(rng, (235, 235, 225) if rng.random() < 0.6 else (230, 190, 60), 8)
    return _mix(img, paint, 0.9 * line)


def _bg_sand(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Beige sand with warped wind ripples and fine grain."""
    base = _jitter(rng, (215, 190, 140), 14)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xx * np.cos(angle) + yy * np.sin(angle)
    warp = _fbm(rng, h, w, (24, 12))
    ripples = np.sin(2 * np.pi * (proj / rng.uniform(6, 11) + 2.0 * warp))
    grain = rng.random((h, w), dtype=np.float32) - 0.5
    shade = 1.0 + 0.07 * ripples + 0.12 * grain + 0.12 * (_fbm(rng, h, w, (30, 15)) - 0.5)
    return base * shade[..., None]


_BACKGROUND_PAINTERS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "grass": _bg_grass,
    "water": _bg_water,
    "sky": _bg_sky,
    "brick wall": _bg_brick_wall,
    "road": _bg_road,
    "sand": _bg_sand,
}


# ------------------------------------------------------------------------------------ object shapes

@dataclass
class _Part:
    """One filled polygon of an object silhouette, in the object's local frame, and its colour key."""

    points: np.ndarray  # (N, 2) local x, y; y points down, the object faces +x
    colour: str


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> np.ndarray:
    """Polygon approximating an axis-aligned ellipse."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _superellipse(cx: float, cy: float, rx: float, ry: float, p: float = 4.0, n: int = 28) -> np.ndarray:
    """Rounded rectangle-like outline |x/rx|^p + |y/ry|^p = 1."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack([cx + rx * np.sign(c) * np.abs(c) ** (2 / p), cy + ry * np.sign(s) * np.abs(s) ** (2 / p)], axis=1)


def _poly(*pts: tuple[float, float]) -> np.ndarray:
    """Polygon from its vertices."""
    return np.asarray(pts, np.float64)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Axis-aligned rectangle polygon."""
    return _poly((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def _limb(x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """A straight limb of given width from (x0, y0) to (x1, y1)."""
    d = np.array([x1 - x0, y1 - y0], np.float64)
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * width / 2
    a = np.array([x0, y0])
    b = np.array([x1, y1])
    return np.stack([a + nrm, b + nrm, b - nrm, a - nrm])


def _pick(rng: np.random.Generator, options: Sequence[_RGB]) -> _RGB:
    """One of a class's typical colours."""
    return options[int(rng.integers(len(options)))]


# Each shape builder returns (parts, colours, aspect) where aspect = local half-width / half-height;
# local coordinates span x in [-aspect, aspect] and y in [-1, 1] (circles stay circles).

def _shape_aeroplane(rng: np.random.Generator) -> tuple[list[_Part], dict[str, _RGB], float]:
    # top view: long fuselage, swept wings, small tailplane; white/silver with a coloured tail
    a = 1.1
    sweep = rng.uniform(0.2, 0.45)
    span = rng.uniform(0.85, 1.0)
    parts = [
        _Part(_poly((0.35, 0.0), (0.05 - sweep, -span), (-0.25 - sweep, -span), (-0.2, 0.0),
                    (-0.25 - sweep, span), (0.05 - sweep, span)), "wing"),
        _Part(_poly((-0.75, 0.0), (-0.98, -0.4), (-1.1, -0.4), (-1.0, 0.0), (-1.1, 0.4), (-0.98, 0.4)), "tail"),
        _Part(_ellipse(-0.05 - 0.5 * sweep, -0.42 * span, 0.16, 0.07), "engine"),
        _Part(_ellipse(-0.05 - 0.5 * sweep, 0.42 * span, 0.16, 0.07), "engine"),
        _Part(_superellipse(0.0, 0.0, 1.08, 0.14, p=2.6), "body"),
        _Part(_ellipse(0.86, 0.0, 0.11, 0.07), "glass"),
    ]
    body = _pick(rng, [(235, 235, 238), (200, 205, 212), (170, 175, 185), (240, 240, 230)])
    colours = {
        "body": body,
        "wing": tuple(0.9 * np.asarray(body)),
        "tail": _pick(rng, [(200, 30, 40), (30, 60, 160), (20, 20, 30), (230, 130, 20), (190, 195, 200)]),
        "engine": (80, 85, 95),
        "glass": (30, 40, 60),
    }
    return parts, colours, a


def _shape_bird(rng: np.random.Generator) -> tuple[list[_Part], dict[str, _RGB], float]:
    # side view: body, head, beak, tail; perched (legs, folded wing) or flying (raised wing)
    a = 1.35
    flying = rng.random() < 0.45
    dy = 0.25 if flying else 0.0  # flying birds sit lower in the box so the wing fits above
    parts = [
        _Part(_poly((-0.6, -0.05 + dy), (-1.3, -0.3 + dy), (-1.3, 0.15 + dy), (-0.6, 0.2 + dy)), "dark"),
        _Part(_ellipse(-0.1, 0.1 + dy, 0.72, 0.42), "main"),
        _Part(_ellipse(-0.02, 0.3 + dy, 0.5, 0.2), "belly"),
        _Part(_ellipse(0.62, -0.28 + dy, 0.3, 0.28), "head"),
        _Part(_poly((0.84, -0.36 + dy), (1.3, -0.22 + dy), (0.84, -0.12 + dy)), "beak"),
        _Part(_ellipse(0.72, -0.34 + dy, 0.06, 0.06), "eye"),
    ]
    if flying:
        tip = rng.uniform(-0.8, -0.1)  # how far back the raised wing is swept
        parts.insert(0, _Part(_poly((-0.2, dy), (0.25, dy), (tip + 0.55, -0.55), (tip + 0.35, -0.6)), "dark"))
        parts.append(_Part(_poly((-0.5, 0.05 + dy), (0.35, 0.05 + dy), (tip + 0.6, -0.8), (tip + 0.3, -1.0),
                                 (tip, -0.92), (tip - 0.2, -0.75)), "main"))
    else:
        parts.insert(0, _Part(_limb(-0.05, 0.4, -0.1, 1.0, 0.08), "beak"))
        parts.insert(0, _Part(_limb(0.15, 0.4, 0.18, 1.0, 0.08), "beak"))
        parts.append(_Part(_poly((-0.55, 0.0), (0.3, -0.05), (0.15, 0.3), (-0.45, 0.25)), "dark"))
    main = np.asarray(_pick(rng, [(120, 80, 45), (45, 45, 50), (50, 95, 175), (185, 40, 35),
                                  (220, 190, 50), (130, 130, 135)]), np.float64)
    colours = {
        "main": tuple(main),
        "head": tuple(main if rng.random() < 0.6 else np.asarray(_pick(rng, [(30, 30, 30), (200, 40, 30), (240, 240, 240)]))),
        "belly": tuple(0.45 * main + 0.55 * np.array([235, 225, 205])),
        "dark": tuple(0.6 * main),
        "beak": _pick(rng, [(240, 150, 20), (230, 190, 40), (60, 50, 40)]),
        "eye": (10, 10, 10),
    }
    return parts, colours, a


def _shape_boat(rng: np.random.Generator) -> tuple[list[_Part], dict[str, _RGB], float]:
    # side view: a hull with a stripe and either sails on a mast or a cabin (motor boat)
    sail = rng.random() < 0.6
    if sail:
        a = 0.9
        parts = [
            _Part(_rect(-0.03, -1.0, 0.03, 0.35), "mast"),
            _Part(_poly((0.08, -0.95), (0.08, 0.25), (0.85, 0.25)), "sail"),
            _Part(_poly((-0.08, -0.8), (-0.08, 0.25), (-0.7, 0.25)), "sail2"),
            _Part(_poly((-0.9, 0.3), (0.9, 0.3), (0.65, 1.0), (-0.72, 1.0)), "hull"),
            _Part(_poly((-0.88, 0.38), (0.88, 0.38), (0.84, 0.5), (-0.85, 0.5)), "stripe"),
        ]
    else:
        a = 1.6
        parts = [
            _Part(_poly((-0.8, -0.5), (0.2, -0.5), (0.55, 0.05), (-0.8, 0.05)), "cabin"),
            _Part(_poly((-0.65, -0.35), (0.15, -0.35), (0.35, -0.08), (-0.65, -0.08)), "glass"),
            _Part(_poly((-1.6, -0.05), (1.6, -0.15), (1.1, 1.0), (-1.45, 1.0)), "hull"),
            _Part(_poly((-1.55, 0.12), (1.45, 0.05), (1.38, 0.22), (-1.5, 0.3)), "stripe"),
        ]
    hull = _pick(rng, [(120, 70, 35), (235, 235, 235), (170, 30, 30), (30, 45, 90), (40, 40, 40)])
    colours = {
        "hull": hull,
        "stripe": _pick(rng, [(240, 240, 240), (200, 30, 30), (30, 60, 150), (230, 180, 30)]),
        "mast": (90, 60, 35),
        "sail": _pick(rng, [(245, 242, 230), (240, 240, 245), (235, 215, 170)]),
        "sail2": _pick(rng, [(245, 242, 230), (220, 60, 50), (60, 110, 190)]),
        "cabin": (235, 235, 232),
        "glass": (40, 55, 75),
    }
    return parts, colours, a


def _shape_car(rng: np.random.Generator) -> tuple[list[_Part], dict[str, _RGB], float]:
    # side view: body, cabin with two windows, two dark wheels with hubs, head- and tail-light
    a = 2.0
    roof = rng.uniform(-0.55, -0.35)
    parts = [
        _Part(_superellipse(0.0, 0.25, 2.0, 0.42, p=5.0), "body"),
        _Part(_poly((-1.05, 0.0), (-0.65, roof), (0.45, roof), (1.0, 0.0)), "body"),
        _Part(_poly((-0.9, -0.05), (-0.6, roof + 0.1), (-0.1, roof + 0.1), (-0.1, -0.05)), "glass"),
        _Part(_poly((0.0, -0.05), (0.0, roof + 0.1), (0.4, roof + 0.1), (0.85, -0.05)), "glass"),
        _Part(_ellipse(1.9, 0.15, 0.1, 0.08), "light"),
        _Part(_ellipse(-1.92, 0.15, 0.08, 0.08), "rear"),
        _Part(_ellipse(-1.2, 0.62, 0.38, 0.38), "tyre"),
        _Part(_ellipse(1.2, 0.62, 0.38, 0.38), "tyre"),
        _Part(_ellipse(-1.2, 0.62, 0.17, 0.17), "hub"),
        _Part(_ellipse(1.2, 0.62, 0.17, 0.17), "hub"),
    ]
    colours = {
        "body": _pick(rng, [(200, 30, 30), (30, 70, 180), (230, 200, 40), (190, 195, 200),
                            (25, 25, 30), (40, 130, 60), (240, 240, 240), (230, 110, 20)]),
        "glass": (60, 80, 105),
        "light": (250, 240, 180),
        "rear": (220, 30, 20),
        "tyre": (20, 20, 22),
        "hub": (170, 170, 175),
    }
    return parts, colours, a


def _shape_cow(rng: np.random.Generator) -> tuple[list[_Part], dict[str, _RGB], float]:
    # side view: rounded body, four legs, neck and head with muzzle, ears, horns, tail, udder
    a = 1.5
    head_y = rng.uniform(-0.45, -0.05)  # grazing cows hold their head lower
    parts = [
        _Part(_rect(-1.05, 0.1, -0.85, 1.0), "leg"),
        _Part(_rect(0.55, 0.1, 0.75, 1.0), "leg"),
        _Part(_limb(-1.12, -0.35, -1.3, 0.45, 0.07), "coat"),
        _Part(_ellipse(-1.3, 0.5, 0.07, 0.12), "dark"),
        _Part(_rect(-0.8, 0.1, -0.6, 1.0), "coat"),
        _Part(_rect(0.8, 0.1, 1.0, 1.0), "coat"),
        _Part(_superellipse(-0.1, -0.1, 1.08, 0.5, p=3.5), "coat"),
        _Part(_ellipse(-0.55, 0.42, 0.2, 0.12), "pink"),
        _Part(_poly((0.7, -0.5), (1.15, head_y - 0.2), (1.2, head_y + 0.2), (0.8, 0.15)), "coat"),
        _Part(_ellipse(1.22, head_y, 0.22, 0.26), "coat"),
        _Part(_ellipse(1.33, head_y + 0.25, 0.16, 0.14), "pink"),
        _Part(_ellipse(1.05, head_y - 0.25, 0.14, 0.06), "coat"),
        _Part(_poly((1.15, head_y - 0.2), (1.22, head_y - 0.42), (1.28, head_y - 0.2)), "horn"),
    ]
    kind = int(rng.integers(3))
    coat = [(240, 240, 235), (140, 85, 45), (40, 35, 35)][kind]
    colours = {
        "coat": coat,
        "leg": tuple(0.85 * np.asarray(coat)),
        "dark": (35, 30, 30),
        "pink": (225, 160, 160) if kind != 2 else (110, 100, 100),
        "horn": (225, 215, 190),
        "spots": (30, 30, 30) if kind == 0 else (245, 240, 230),
    }
    colours["_spotty"] = (1.0, 0.0, 0.0) if kind == 0 or rng.random() < 0.3 else (0.0, 0.0, 0.0)
    return parts, colours, a


def _shape_person(rng: np.random.Generator) -> tuple[list[_Part], dict[str, _RGB], float]:
    # front view: legs in trousers, shoes, shirt torso, arms with hands, neck, head with hair
    a = 0.45
    raise_arm = rng.random() < 0.3
    rx = 0.42 if raise_arm else 0.34
    ry = -1.0 if raise_arm else 0.15
    parts = [
        _Part(_rect(-0.18, 0.15, -0.02, 0.94), "trousers"),
        _Part(_rect(0.02, 0.15, 0.18, 0.94), "trousers"),
        _Part(_rect(-0.21, 0.92, -0.01, 1.0), "shoes"),
        _Part(_rect(0.01, 0.92, 0.21, 1.0), "shoes"),
        _Part(_limb(-0.21, -0.5, -0.33, 0.12, 0.1), "shirt"),
        _Part(_limb(0.21, -0.5, rx, ry + 0.07, 0.1), "shirt"),
        _Part(_ellipse(-0.34, 0.15, 0.06, 0.06), "skin"),
        _Part(_ellipse(rx, ry + 0.06, 0.06, 0.06), "skin"),
        _Part(_poly((-0.23, -0.58), (0.23, -0.58), (0.2, 0.2), (-0.2, 0.2)), "shirt"),
        _Part(_rect(-0.05, -0.68, 0.05, -0.56), "skin"),
        _Part(_ellipse(0.0, -0.79, 0.14, 0.17), "skin"),
        _Part(_ellipse(0.0, -0.87, 0.15, 0.1), "hair"),
    ]
    colours = {
        "skin": _pick(rng, [(240, 200, 170), (220, 170, 130), (175, 120, 80), (110, 70, 45)]),
        "hair": _pick(rng, [(30, 25, 20), (90, 60, 30), (200, 170, 100), (60, 40, 30)]),
        "shirt": _pick(rng, [(210, 40, 40), (40, 90, 190), (240, 240, 240), (50, 150, 70),
                             (240, 200, 40), (120, 50, 150), (240, 130, 40)]),
        "trousers": _pick(rng, [(40, 60, 110), (30, 30, 35), (150, 130, 95), (90, 90, 95)]),
        "shoes": (30, 25, 25),
    }
    return parts, colours, a


_SHAPES: dict[str, Callable[[np.random.Generator], tuple[list[_Part], dict[str, _RGB], float]]] = {
    "aeroplane": _shape_aeroplane,
    "bird": _shape_bird,
    "boat": _shape_boat,
    "car": _shape_car,
    "cow": _shape_cow,
    "person": _shape_person,
}

# max |rotation| in degrees: upright things barely tilt, flying things bank
_MAX_ROTATION = {"aeroplane": 30.0, "bird": 20.0, "boat": 8.0, "car": 5.0, "cow": 6.0, "person": 8.0}


# ---------------------------------------------------------------------------------------- the scene

def _draw_object(
    rng: np.random.Generator,
    name: str,
    height: int,
    width: int,
    size_frac: float,
) -> dict | None:
    """Rasterise one jittered object; return its pixel window, part coverages and colours."""
    parts, colours, aspect = _SHAPES[name](rng)
    side = min(height, width)
    stretch = rng.uniform(0.85, 1.15)
    aspect_px = aspect * stretch
    # `size_frac` sets the geometric mean of the box sides, so long cars and tall people are not
    # thinner than the rest; the longer side is capped at 1.1 image sides (the border may cut it)
    unit = min(size_frac * side / (2 * np.sqrt(aspect_px)), 1.1 * side / (2 * max(aspect_px, 1.0)))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    theta = np.deg2rad(rng.uniform(-1, 1) * _MAX_ROTATION[name])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    half_w = aspect * unit * stretch
    half_h = unit
    # keep the centre inside so at most ~25 % of the object is cut off by the image border
    cx = rng.uniform(0.5 * half_w, width - 0.5 * half_w) if width > half_w else width / 2
    cy = rng.uniform(0.5 * half_h, height - 0.5 * half_h) if height > half_h else height / 2

    scale = np.array([flip * unit * stretch, unit])
    pix = [(p.points * scale) @ rot.T + (cx, cy) for p in parts]
    allp = np.concatenate(pix)
    lo = allp.min(0)
    hi = allp.max(0)
    x0 = max(int(np.floor(lo[0])), 0)
    y0 = max(int(np.floor(lo[1])), 0)
    x1 = min(int(np.ceil(hi[0])) + 1, width)
    y1 = min(int(np.ceil(hi[1])) + 1, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    truncated = bool(lo[0] < -0.5 or lo[1] < -0.5 or hi[0] > width - 0.5 or hi[1] > height - 0.5)

    s = SUPERSAMPLE
    bw, bh = x1 - x0, y1 - y0
    canvas = Image.new("L", (bw * s, bh * s), 0)
    draw = ImageDraw.Draw(canvas)
    keys: list[str] = []
    for p, pts in zip(parts, pix):
        if p.colour not in keys:
            keys.append(p.colour)
        # sub-sample centres sit at (i + 0.5) / s in pixel units
        hires = (pts - (x0, y0)) * s - 0.5
        draw.polygon(hires.ravel().tolist(), fill=keys.index(p.colour) + 1)
    part_map = np.asarray(canvas)
    coverage = np.stack([_block_count(part_map == k + 1, s) for k in range(len(keys))]).astype(np.float32) / (s * s)
    return {
        "name": name,
        "window": (y0, y1, x0, x1),
        "mask_hires": part_map > 0,
        "keys": keys,
        "coverage": coverage,
        "colours": colours,
        "truncated": truncated,
    }


def _object_colour_field(rng: np.random.Generator, obj: dict) -> np.ndarray:
    """Premultiplied colour (h, w, 3) of an object inside its window: parts, shading and texture."""
    y0, y1, x0, x1 = obj["window"]
    h, w = y1 - y0, x1 - x0
    colours = obj["colours"]
    acc = np.zeros((h, w, 3), np.float32)
    spotty = colours.get("_spotty", (0.0,))[0] > 0
    if spotty:
        spots = _smoothstep(0.55, 0.62, _value_noise(rng, h, w, max(3.0, h / 4), max(3.0, w / 6)))
    jit = {k: _jitter(rng, v, 14.0) for k, v in colours.items() if not k.startswith("_")}
    for k, key in enumerate(obj["keys"]):
        cov = obj["coverage"][k][..., None]
        col = np.broadcast_to(jit[key], (h, w, 3))
        if spotty and key in ("coat", "leg"):
            col = _mix(col, jit["spots"], spots)
        acc += cov * col
    # simple lighting: brighter towards the top, plus fine surface grain
    ramp = np.linspace(0.12, -0.12, h, dtype=np.float32)[:, None]
    grain = 0.06 * (rng.random((h, w), dtype=np.float32) - 0.5)
    return acc * (1.0 + ramp + grain)[..., None]


def _block_count(mask: np.ndarray, s: int) -> np.ndarray:
    """Count True sub-samples in every s x s block of a (H*s, W*s) boolean array -> (H, W) uint8."""
    hs, ws = mask.shape
    # strided slice sums are ~10x faster than .sum(axis=(1, 3)) on the 4-d view
    cols = mask.view(np.uint8).reshape(hs, ws // s, s)
    acc = cols[:, :, 0].copy()
    for j in range(1, s):
        acc += cols[:, :, j]
    rows = acc.reshape(hs // s, s, ws // s)
    out = rows[:, 0].copy()
    for j in range(1, s):
        out += rows[:, j]
    return out


def _border_band(inst: np.ndarray, border_width: int) -> np.ndarray:
    """Boolean band straddling every instance outline, ``border_width`` pixels wide in total."""
    if border_width <= 0:
        return np.zeros(inst.shape, bool)
    pad = np.pad(inst, 1, mode="edge")  # the image frame itself is no outline
    h, w = inst.shape
    edge = np.zeros(inst.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                edge |= pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] != inst

    def within(r: int) -> np.ndarray:
        # pixels with a differently labelled pixel at Chebyshev distance <= r = edge dilated by r - 1
        out = edge.copy()
        for _ in range(r - 1):
            p = np.pad(out, 1)
            grown = out.copy()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    grown |= p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            out = grown
        return out

    inner = (border_width + 1) // 2  # the object side gets the larger half of an odd band
    outer = border_width // 2
    band = within(inner) & (inst > 0)
    if outer > 0:
        band |= within(outer) & (inst == 0)
    return band


def _choose_classes(rng: np.random.Generator, classes: Sequence[str], backgrounds: Sequence[str],
                    max_objects: int) -> tuple[list[str], str]:
    """Pick distinct classes and a background; later classes prefer the first class's background."""
    k_max = min(max_objects, len(classes))
    weights = 0.55 ** np.arange(k_max)  # most images hold one class, as in VOC
    n = int(rng.choice(k_max, p=weights / weights.sum())) + 1
    first = classes[int(rng.integers(len(classes)))]
    probs = np.asarray(COOCCURRENCE[first], np.float64)
    background = backgrounds[int(rng.choice(len(backgrounds), p=probs / probs.sum()))]
    chosen = [first]
    b = backgrounds.index(background)
    while len(chosen) < n:
        rest = [c for c in classes if c not in chosen]
        # objects that like this background co-occur more often (boat with boat on water, ...)
        w = np.array([COOCCURRENCE[c][b] + 0.05 for c in rest])
        chosen.append(rest[int(rng.choice(len(rest), p=w / w.sum()))])
    return chosen, background


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    max_objects: int = 3,
    border_width: int = 1,
    duplicate_prob: float = 0.12,
) -> tuple[np.ndarray, np.ndarray, list[dict], str]:
    """Render one scene: (image HxWx3 uint8, label HxW uint8, objects, background name).

    label: 0 background, i + 1 for ``DEMO_CLASSES[i]``, 255 on the outline band. objects: one dict
    per instance in paint order with ``name``, ``class_index``, ``bbox`` (xmin, ymin, xmax, ymax;
    1-based inclusive, VOC), ``truncated`` and ``visible_pixels``. Scenes in which some instance or
    class would keep too few visible pixels are redrawn from the same generator.
    """
    if height < 16 or width < 16:
        raise ValueError(f"render_scene: image size {height}x{width} is too small (need >= 16)")
    if max_objects < 1:
        raise ValueError(f"render_scene: max_objects must be >= 1, got {max_objects}")
    if border_width < 0:
        raise ValueError(f"render_scene: border_width must be >= 0, got {border_width}")
    for _ in range(MAX_SCENE_TRIES):
        scene = _try_scene(rng, height, width, max_objects, border_width, duplicate_prob)
        if scene is not None:
            return scene
    raise RuntimeError(
        f"render_scene: no scene of {height}x{width} with border_width={border_width} kept "
        f">= {MIN_CLASS_PIXELS} visible pixels per class after {MAX_SCENE_TRIES} tries; "
        "use larger images or a thinner border")


def _try_scene(rng: np.random.Generator, height: int, width: int, max_objects: int,
               border_width: int, duplicate_prob: float) -> tuple | None:
    """One attempt of ``render_scene``; None when some object ends up (nearly) invisible."""
    classes = list(DEMO_CLASSES)
    names, background = _choose_classes(rng, classes, DEMO_BACKGROUNDS, max_objects)
    if rng.random() < duplicate_prob:
        names.append(names[int(rng.integers(len(names)))])
    order = [names[i] for i in rng.permutation(len(names))]
    n = len(order)
    # Objects are large, as in VOC, where objects hold about 30 % of the pixels: on the demo CLIP's
    # 12 x 12 patch grid small objects would leave a CAM a patch or two to work with. Crowded scenes
    # use smaller objects.
    fracs = rng.uniform(0.5, max(0.95 - 0.1 * (n - 1), 0.65), n) if n > 1 else rng.uniform(0.7, 1.05, 1)

    image = _BACKGROUND_PAINTERS[background](rng, height, width).astype(np.float32)
    s = SUPERSAMPLE
    inst_hires = np.zeros((height * s, width * s), np.uint8)
    drawn: list[dict] = []
    for name, frac in zip(order, fracs):
        obj = _draw_object(rng, name, height, width, float(frac))
        if obj is None:
            return None
        y0, y1, x0, x1 = obj["window"]
        colour = _object_colour_field(rng, obj)
        alpha = obj["coverage"].sum(axis=0)[..., None]
        # area-averaged compositing: later objects cover earlier ones
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1.0 - alpha) + colour
        inst_hires[y0 * s:y1 * s, x0 * s:x1 * s][obj["mask_hires"]] = len(drawn) + 1
        drawn.append(obj)

    # label every pixel with the instance holding most of its sub-samples (ties go to the lower id)
    votes = np.zeros((len(drawn) + 1, height, width), np.uint8)
    for k, obj in enumerate(drawn, start=1):
        y0, y1, x0, x1 = obj["window"]
        votes[k, y0:y1, x0:x1] = _block_count(inst_hires[y0 * s:y1 * s, x0 * s:x1 * s] == k, s)
    votes[0] = s * s - votes[1:].sum(axis=0, dtype=np.uint8)
    inst = np.zeros((height, width), np.uint8)
    best = votes[0].copy()
    for k in range(1, len(drawn) + 1):  # running argmax; strict > keeps the lower id on ties
        win = votes[k] > best
        inst[win] = k
        best[win] = votes[k][win]
    class_of = np.array([0] + [DEMO_CLASSES.index(o["name"]) + 1 for o in drawn], np.uint8)
    label = class_of[inst]
    band = _border_band(inst, border_width)
    label[band] = 255

    objects: list[dict] = []
    for k, obj in enumerate(drawn, start=1):
        visible = int(((inst == k) & ~band).sum())
        if visible < MIN_INSTANCE_PIXELS:
            return None
        y0, y1, x0, x1 = obj["window"]
        own = obj["coverage"].sum(axis=0) >= 0.5  # the full (unoccluded) silhouette, as VOC boxes
        ys, xs = np.nonzero(own)
        if len(ys) == 0:
            return None
        objects.append({
            "name": obj["name"],
            "class_index": DEMO_CLASSES.index(obj["name"]),
            "bbox": (x0 + int(xs.min()) + 1, y0 + int(ys.min()) + 1, x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1),
            "truncated": obj["truncated"],
            "visible_pixels": visible,
        })
    for ci in {o["class_index"] for o in objects}:
        if int((label == ci + 1).sum()) < MIN_CLASS_PIXELS:
            return None

    # global exposure jitter and mild sensor noise, then quantise
    image = image * rng.uniform(0.88, 1.12) + rng.uniform(-10, 10)
    image += 2.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, objects, background


# ----------------------------------------------------------------------------------------- captions

_PLACES: dict[str, tuple[str, ...]] = {
    "grass": ("on the grass", "on green grass", "in the grass"),
    "water": ("on the water", "on water", "in the water"),
    "sky": ("in the sky", "against the sky", "in a blue sky"),
    "brick wall": ("in front of a brick wall", "by a brick wall", "next to a brick wall"),
    "road": ("on the road", "on a road", "by the road"),
    "sand": ("on the sand", "on sand", "in the sand"),
}
_TEMPLATES = ("a photo of {objs} {place}.", "{objs} {place}.", "a picture of {objs} {place}.",
              "an image showing {objs} {place}.", "a photo showing {objs} {place}.")


def make_caption(rng: np.random.Generator, class_names: Sequence[str], background: str) -> str:
    """Caption naming every class once (random order) and the background, from a few templates."""
    if background not in _PLACES:
        raise ValueError(f"make_caption: unknown background {background!r}")
    names = list(dict.fromkeys(class_names))
    if not names:
        raise ValueError("make_caption: need at least one class name")
    names = [names[i] for i in rng.permutation(len(names))]
    phrases = [("an " if n[0] in "aeiou" else "a ") + n for n in names]
    objs = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    place = _PLACES[background][int(rng.integers(len(_PLACES[background])))]
    return _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(objs=objs, place=place)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator ``generate_demo_world`` uses for image number ``index`` (0-based over all splits)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def random_scene(
    rng: np.random.Generator,
    *,
    min_size: int = 88,
    max_size: int = 120,
    max_objects: int = 3,
    border_width: int = 1,
) -> tuple[np.ndarray, np.ndarray, list[dict], str, str]:
    """One dataset example exactly as ``generate_demo_world`` draws it: (image, label, objects, background, caption)."""
    if min_size < 16 or max_size < min_size:
        raise ValueError(f"random_scene: need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    h = int(rng.integers(min_size, max_size + 1))
    w = int(rng.integers(min_size, max_size + 1))
    image, label, objects, background = render_scene(rng, h, w, max_objects=max_objects, border_width=border_width)
    caption = make_caption(rng, [o["name"] for o in objects], background)
    return image, label, objects, background, caption


# ------------------------------------------------------------------------------------- file writing

def _annotation_xml(image_id: str, height: int, width: int, objects: list[dict]) -> str:
    """VOC-style annotation XML text for one image."""
    lines = [
        "<annotation>",
        "\t<folder>VOC2012</folder>",
        f"\t<filename>{escape(image_id)}.jpg</filename>",
        "\t<source>",
        "\t\t<database>wsss demo world</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>1</segmented>",
    ]
    for o in objects:
        xmin, ymin, xmax, ymax = o["bbox"]
        lines += [
            "\t<object>",
            f"\t\t<name>{escape(o['name'])}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{int(o['truncated'])}</truncated>",
            "\t\t<difficult>0</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{xmin}</xmin>",
            f"\t\t\t<ymin>{ymin}</ymin>",
            f"\t\t\t<xmax>{xmax}</xmax>",
            f"\t\t\t<ymax>{ymax}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _write_example(out: Path, image_id: str, image: np.ndarray, label: np.ndarray,
                   objects: list[dict], jpeg_quality: int, palette: list[int]) -> None:
    """Write the JPEG, palette PNG and XML of one example."""
    h, w = label.shape
    Image.fromarray(image).save(out / "JPEGImages" / f"{image_id}.jpg", format="JPEG",
                                quality=jpeg_quality, subsampling="4:2:0", optimize=False)
    png = Image.frombytes("P", (w, h), np.ascontiguousarray(label).tobytes())
    png.putpalette(palette)
    png.save(out / "SegmentationClass" / f"{image_id}.png", format="PNG", optimize=False)
    (out / "Annotations" / f"{image_id}.xml").write_text(_annotation_xml(image_id, h, w, objects))


def _check_args(n_train: int, n_val: int, n_clip: int, min_size: int, max_size: int,
                max_objects: int, border_width: int, jpeg_quality: int) -> None:
    """Raise ValueError naming the first bad argument of ``generate_demo_world``."""
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_clip", n_clip)):
        if int(v) != v or v < 0:
            raise ValueError(f"generate_demo_world: {name} must be a non-negative integer, got {v!r}")
    if n_train + n_val + n_clip == 0:
        raise ValueError("generate_demo_world: n_train + n_val + n_clip is 0; nothing to generate")
    if n_train + n_val + n_clip > 999_999:
        raise ValueError("generate_demo_world: at most 999999 images (6-digit ids)")
    if min_size < 32 or max_size < min_size:
        raise ValueError(f"generate_demo_world: need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    if not 1 <= max_objects <= len(DEMO_CLASSES):
        raise ValueError(f"generate_demo_world: max_objects must be in 1..{len(DEMO_CLASSES)}, got {max_objects}")
    if border_width < 0:
        raise ValueError(f"generate_demo_world: border_width must be >= 0, got {border_width}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"generate_demo_world: jpeg_quality must be in 1..100, got {jpeg_quality}")


def generate_demo_world(
    root: Path,
    *,
    seed: int = 0,
    n_train: int,
    n_val: int,
    n_clip: int,
    min_size: int = 88,
    max_size: int = 120,
    max_objects: int = 3,
    border_width: int = 1,
    jpeg_quality: int = 95,
    overwrite: bool = False,
) -> dict:
    """Write the demo world in PASCAL VOC 2012 layout under ``root``; return a summary dict.

    Deterministic: image number j (0-based across train, val, clip_pretrain) is drawn from its own
    generator seeded by (seed, j), so equal arguments give byte-identical files. Files are written
    to a temporary sibling folder that replaces ``root`` only when everything is written.
    """
    root = Path(root)
    _check_args(n_train, n_val, n_clip, min_size, max_size, max_objects, border_width, jpeg_quality)
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"generate_demo_world: {root} exists and is not a directory")
        if any(root.iterdir()) and not overwrite:
            raise FileExistsError(f"generate_demo_world: {root} exists and is not empty (pass overwrite=True)")
    # a temporary sibling folder replaces root at the end; one a killed run left is removed first
    with atomic_output(root) as tmp:
        tmp.mkdir()
        summary = _write_world(tmp, seed, {"train": n_train, "val": n_val, "clip_pretrain": n_clip},
                               min_size, max_size, max_objects, border_width, jpeg_quality)
        if root.exists():
            shutil.rmtree(root)
    return summary


def _write_world(out: Path, seed: int, sizes: dict[str, int], min_size: int, max_size: int,
                 max_objects: int, border_width: int, jpeg_quality: int) -> dict:
    """Write all splits, captions and world.json into ``out``; return the summary."""
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True)
    captions: list[str] = []
    palette = voc_palette()
    class_images = {split: {c: 0 for c in DEMO_CLASSES} for split in SPLITS}
    bg_images = {split: {b: 0 for b in DEMO_BACKGROUNDS} for split in SPLITS}
    index = 0
    for split in SPLITS:
        ids: list[str] = []
        for _ in range(sizes[split]):
            image_id = f"{ID_PREFIX}_{index:06d}"
            rng = scene_rng(seed, index)
            image, label, objects, background, caption = random_scene(
                rng, min_size=min_size, max_size=max_size, max_objects=max_objects, border_width=border_width)
            names = list(dict.fromkeys(o["name"] for o in objects))
            _write_example(out, image_id, image, label, objects, jpeg_quality, palette)
            captions.append(f"{image_id}\t{caption}")
            for name in names:
                class_images[split][name] += 1
            bg_images[split][background] += 1
            ids.append(image_id)
            index += 1
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    (out / "captions.tsv").write_text("".join(c + "\n" for c in captions))
    summary = {
        "images": dict(sizes),
        "class_images": class_images,
        "background_images": bg_images,
    }
    world = {
        "generator": "wsss.demo.world",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "classes": list(DEMO_CLASSES),
        "backgrounds": list(DEMO_BACKGROUNDS),
        "splits": dict(sizes),
        "params": {"min_size": min_size, "max_size": max_size, "max_objects": max_objects,
                   "border_width": border_width, "jpeg_quality": jpeg_quality,
                   "supersample": SUPERSAMPLE, "min_class_pixels": MIN_CLASS_PIXELS},
        "cooccurrence": {c: dict(zip(DEMO_BACKGROUNDS, COOCCURRENCE[c])) for c in DEMO_CLASSES},
        **summary,
    }
    (out / "world.json").write_text(json.dumps(world, indent=2, sort_keys=True) + "\n")
    return summary


def read_captions(root: Path) -> dict[str, str]:
    """Read ``captions.tsv`` of a demo world into {image_id: caption}."""
    path = Path(root) / "captions.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"read_captions: {path} not found")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line:
            continue
        image_id, sep, caption = line.partition("\t")
        if not sep:
            raise ValueError(f"read_captions: {path} line {n} has no tab")
        out[image_id] = caption
    return out
