"""The embedded default dataset: a small synthetic sketch + "photo" set that the package draws itself.

Nothing is downloaded or shipped: every image is generated procedurally with PIL and NumPy from a
seed, so the same seed gives byte-identical PNG files on every machine with the same Pillow/zlib.
It exists so that training, evaluation and demos run end to end offline; it is **not** a benchmark,
and numbers on it say nothing about real sketches or photos.

Content: 16 object classes, 30 sketches + 30 photos per class (960 images), 128 x 128 px.

- *Photos* (RGB): the object as flat-coloured parts (colour drawn from a per-class palette and
  jittered), lit by a random linear shading ramp with a mottled texture, a soft drop shadow, on a
  random background (two-colour gradient, blurred colour noise, stripes or checks) with 0-3
  clutter shapes behind it; random rotation (+-30 deg), scale, position, aspect and mirror.
- *Sketches* (grayscale): the same part outlines as dark wobbly strokes on white: each outline is
  resampled and displaced by smooth random noise, strokes vary in width and grey level, closed
  outlines sometimes overshoot, about 1 in 8 strokes is drawn only partly, and small details
  (spots, ticks, windows ...) are left out about a quarter of the time; independent random pose.

The classes and what each looks like (unit square, y down):

| class | parts |
|---|---|
| apple | round body with a dip at the top, stem, leaf |
| boat | trapezoid hull, mast, one or two triangular sails |
| car | body, cabin with two windows, two wheels, headlight |
| clock | round face and rim, 12 tick marks, two hands, centre dot |
| cup | tapered body, side handle, rim ellipse, sometimes a saucer |
| envelope | rectangle, V-shaped flap line, sometimes a stamp |
| fish | elliptic body, triangular tail and dorsal fin, eye, gill arc |
| heart | the classic heart curve |
| house | wall, triangular roof, door, window with cross bars, sometimes a chimney |
| key | ring bow, shaft, two or three teeth |
| lightbulb | round bulb, neck, screw base with thread lines, zig-zag filament |
| mushroom | half-dome cap with spots, stem |
| star | five-pointed star |
| sun | disc with 8-12 rays |
| tree | trunk and a bumpy, cloud-like round canopy |
| umbrella | scalloped canopy with ribs, shaft, J-shaped handle |

Zero-shot split `"embedded"` (files `splits/embedded_{train,test}.txt`): test (unseen) =
`sorted(random.Random(0).sample(EMBEDDED_CLASSES, 4))` = apple, fish, star, umbrella; the
other 12 are train.

The PNG files are cached under `$HF_SBIR_CACHE/embedded-<version>` (default
`~/.cache/hf_sbir/embedded-v1`), so the `image` column holds paths like any other loader; they are
regenerated when missing. `EMBEDDED_VERSION` changes whenever the drawings change.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from datasets import DatasetDict
from PIL import Image, ImageDraw, ImageFilter

from hf_sbir.data.core import build_dataset_dict, scan_class_folders
from hf_sbir.data.folder import folder_class_dirs
from hf_sbir.data.zero_shot import SplitLike

EMBEDDED_VERSION = "v1"
IMAGES_PER_CLASS = 30
IMAGE_SIZE = 128
_SUPERSAMPLE = 2  # draw at 2x and down-sample: anti-aliased edges at a small cost

TAU = 2 * np.pi


@dataclass
class _Part:
    """One piece of an object: a closed filled outline (`width == 0`) or an open/closed line of `width`."""

    points: np.ndarray  # (k, 2), unit coordinates, y down
    role: str  # palette key
    closed: bool = True
    width: float = 0.0  # line width in unit coordinates; 0 = filled polygon
    detail: bool = False  # small detail that sketches may omit


def _ellipse(cx, cy, rx, ry=None, n=40, a0=0.0, a1=TAU, rot=0.0) -> np.ndarray:
    full = abs((a1 - a0) - TAU) < 1e-9
    t = np.linspace(a0, a1, n, endpoint=not full)
    pts = np.stack([rx * np.cos(t), (rx if ry is None else ry) * np.sin(t)], axis=1)
    c, s = np.cos(rot), np.sin(rot)
    return pts @ np.array([[c, s], [-s, c]]) + (cx, cy)


def _rect(x0, y0, x1, y1) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], float)


# --- the 16 classes: each returns its parts for one random variation --------------------------


def _apple(rng):
    t = np.linspace(0, TAU, 48, endpoint=False)
    dip = np.exp(-(((t - 1.5 * np.pi) / 0.35) ** 2))  # notch at the top (angle 3pi/2 is "up", y down)
    r = 0.62 * (1 - 0.14 * dip) * (1 + 0.05 * np.cos(2 * t))
    body = np.stack([r * np.cos(t), 0.1 + r * np.sin(t) * rng.uniform(0.9, 1.05)], 1)
    tip = (rng.uniform(0.0, 0.15), -0.82)
    return [
        _Part(body, "body"),
        _Part(np.array([(0.0, -0.45), tip]), "stem", closed=False, width=0.07),
        _Part(_ellipse(0.25, -0.66, 0.2, 0.08, rot=rng.uniform(0.3, 0.8)), "leaf", detail=True),
    ]


def _boat(rng):
    h = rng.uniform(0.25, 0.35)
    parts = [
        _Part(np.array([(-0.85, 0.3), (0.85, 0.3), (0.55, 0.3 + h), (-0.55, 0.3 + h)]), "hull"),
        _Part(np.array([(0.0, 0.3), (0.0, -0.85)]), "mast", closed=False, width=0.05),
        _Part(np.array([(0.06, -0.8), (0.06, 0.22), (rng.uniform(0.55, 0.75), 0.22)]), "sail"),
    ]
    if rng.random() < 0.5:
        parts.append(_Part(np.array([(-0.06, -0.65), (-0.06, 0.22), (-rng.uniform(0.4, 0.6), 0.22)]), "sail"))
    return parts


def _car(rng):
    roof = rng.uniform(-0.42, -0.3)
    return [
        _Part(_rect(-0.9, -0.02, 0.9, 0.38), "body"),
        _Part(np.array([(-0.5, 0.0), (-0.3, roof), (0.32, roof), (0.55, 0.0)]), "body"),
        _Part(
            np.array([(-0.4, -0.04), (-0.26, roof + 0.06), (-0.02, roof + 0.06), (-0.02, -0.04)]), "window", detail=True
        ),
        _Part(
            np.array([(0.04, -0.04), (0.04, roof + 0.06), (0.28, roof + 0.06), (0.44, -0.04)]), "window", detail=True
        ),
        _Part(_ellipse(-0.5, 0.38, 0.2), "wheel"),
        _Part(_ellipse(0.5, 0.38, 0.2), "wheel"),
        _Part(_ellipse(0.82, 0.08, 0.06, 0.05, n=16), "light", detail=True),
    ]


def _clock(rng):
    parts = [_Part(_ellipse(0, 0, 0.82), "face"), _Part(_ellipse(0, 0, 0.82), "rim", width=0.08)]
    for k in range(12):
        a = k * TAU / 12
        d = np.array([np.cos(a), np.sin(a)])
        parts.append(_Part(np.array([0.62 * d, 0.74 * d]), "tick", closed=False, width=0.04, detail=True))
    for length, a in ((0.45, rng.uniform(0, TAU)), (0.65, rng.uniform(0, TAU))):
        parts.append(
            _Part(np.array([(0, 0), (length * np.cos(a), length * np.sin(a))]), "hand", closed=False, width=0.06)
        )
    parts.append(_Part(_ellipse(0, 0, 0.06, n=12), "hand", detail=True))
    return parts


def _cup(rng):
    top = rng.uniform(0.45, 0.55)
    parts = []
    if rng.random() < 0.5:
        parts.append(_Part(_ellipse(0, 0.68, 0.75, 0.1), "rim", detail=True))
    parts += [
        _Part(np.array([(-top, -0.55), (top, -0.55), (0.38, 0.62), (-0.38, 0.62)]), "body"),
        _Part(_ellipse(top - 0.02, 0.0, 0.32, 0.3, n=20, a0=-np.pi / 2, a1=np.pi / 2), "body", closed=False, width=0.1),
        _Part(_ellipse(0, -0.55, top, 0.08, n=28), "rim", detail=True),
    ]
    return parts


def _envelope(rng):
    depth = rng.uniform(0.0, 0.2)
    parts = [
        _Part(_rect(-0.85, -0.55, 0.85, 0.55), "paper"),
        _Part(np.array([(-0.85, -0.55), (0.0, depth), (0.85, -0.55)]), "flap", closed=False, width=0.04),
    ]
    if rng.random() < 0.4:
        parts.append(_Part(_rect(0.5, -0.45, 0.72, -0.2), "stamp", detail=True))
    return parts


def _fish(rng):
    ry = rng.uniform(0.3, 0.4)
    return [
        _Part(np.array([(-0.1, -ry + 0.02), (0.15, -ry - 0.25), (0.3, -ry + 0.12)]), "fin"),
        _Part(np.array([(0.42, 0.0), (0.9, -rng.uniform(0.3, 0.45)), (0.9, rng.uniform(0.3, 0.45))]), "fin"),
        _Part(_ellipse(-0.1, 0.0, 0.62, ry), "body"),
        _Part(_ellipse(-0.3, 0.0, 0.1, ry * 0.7, n=12, a0=-1.2, a1=1.2), "fin", closed=False, width=0.03, detail=True),
        _Part(_ellipse(-0.48, -0.08, 0.06, n=12), "eye"),
    ]


def _heart(rng):
    t = np.linspace(0, TAU, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [_Part(np.stack([x / 17.0, (y + 2.0) / 17.0 * rng.uniform(0.9, 1.1)], 1), "body")]


def _house(rng):
    peak = rng.uniform(-0.9, -0.7)
    parts = []
    if rng.random() < 0.5:
        parts.append(_Part(_rect(0.3, peak + 0.15, 0.45, -0.3), "roof", detail=True))
    parts += [
        _Part(_rect(-0.6, -0.1, 0.6, 0.8), "wall"),
        _Part(np.array([(-0.8, -0.1), (0.0, peak), (0.8, -0.1)]), "roof"),
        _Part(_rect(-0.4, 0.3, -0.12, 0.8), "door"),
        _Part(_rect(0.12, 0.1, 0.42, 0.4), "window", detail=True),
        _Part(np.array([(0.27, 0.1), (0.27, 0.4)]), "door", closed=False, width=0.03, detail=True),
        _Part(np.array([(0.12, 0.25), (0.42, 0.25)]), "door", closed=False, width=0.03, detail=True),
    ]
    return parts


def _key(rng):
    parts = [
        _Part(_ellipse(-0.55, 0.0, 0.3), "metal", width=0.14),
        _Part(_rect(-0.27, -0.07, 0.88, 0.07), "metal"),
    ]
    for x in (0.5, 0.72) + ((0.3,) if rng.random() < 0.5 else ()):
        parts.append(_Part(_rect(x - 0.06, 0.05, x + 0.06, 0.07 + rng.uniform(0.15, 0.25)), "metal"))
    return parts


def _lightbulb(rng):
    zig = np.array([(-0.15, -0.2), (-0.08, -0.35), (0.0, -0.2), (0.08, -0.35), (0.15, -0.2)])
    return [
        _Part(np.array([(-0.27, 0.05), (0.27, 0.05), (0.2, 0.45), (-0.2, 0.45)]), "glass"),
        _Part(_ellipse(0.0, -0.28, rng.uniform(0.46, 0.54)), "glass"),
        _Part(_rect(-0.2, 0.45, 0.2, 0.75), "base"),
        _Part(np.array([(-0.2, 0.55), (0.2, 0.55)]), "filament", closed=False, width=0.03, detail=True),
        _Part(np.array([(-0.2, 0.65), (0.2, 0.65)]), "filament", closed=False, width=0.03, detail=True),
        _Part(zig, "filament", closed=False, width=0.03, detail=True),
        _Part(_rect(-0.07, 0.75, 0.07, 0.85), "base", detail=True),
    ]


def _mushroom(rng):
    ry = rng.uniform(0.5, 0.7)
    cap = np.concatenate([_ellipse(0, 0.05, 0.82, ry, n=36, a0=np.pi, a1=TAU), [(0.6, 0.12), (-0.6, 0.12)]])
    parts = [
        _Part(np.array([(-0.2, 0.1), (0.2, 0.1), (0.25, 0.8), (-0.25, 0.8)]), "stem"),
        _Part(cap, "cap"),
    ]
    for _ in range(int(rng.integers(3, 6))):
        a = rng.uniform(np.pi * 1.15, np.pi * 1.85)
        rr = rng.uniform(0.3, 0.75)
        parts.append(
            _Part(_ellipse(0.82 * rr * np.cos(a), 0.05 + ry * rr * np.sin(a), 0.09, n=14), "spot", detail=True)
        )
    return parts


def _star(rng):
    inner = rng.uniform(0.33, 0.45)
    a = -np.pi / 2 + np.arange(10) * TAU / 10
    r = np.where(np.arange(10) % 2 == 0, 0.92, inner)
    return [_Part(np.stack([r * np.cos(a), 0.08 + r * np.sin(a)], 1), "body")]


def _sun(rng):
    n = int(rng.integers(8, 13))
    phase = rng.uniform(0, TAU)
    parts = [_Part(_ellipse(0, 0, 0.45), "disk")]
    for k in range(n):
        a = phase + k * TAU / n
        d = np.array([np.cos(a), np.sin(a)])
        parts.append(_Part(np.array([0.58 * d, 0.9 * d]), "ray", closed=False, width=0.07))
    return parts


def _tree(rng):
    # Canopy: one bumpy blob (a circle whose radius ripples k times), like a doodled cloud.
    t = np.linspace(0, TAU, 72, endpoint=False)
    k, phase = int(rng.integers(5, 8)), rng.uniform(0, TAU)
    r = 0.52 * (1 + 0.1 * np.abs(np.cos(k * t / 2 + phase)))
    canopy = np.stack([r * np.cos(t) * rng.uniform(0.95, 1.15), -0.32 + r * np.sin(t)], 1)
    return [_Part(_rect(-0.12, 0.1, 0.12, 0.88), "trunk"), _Part(canopy, "canopy")]


def _umbrella(rng):
    k = int(rng.integers(3, 5))
    dome = _ellipse(0, 0.0, 0.9, rng.uniform(0.6, 0.75), n=36, a0=np.pi, a1=TAU)
    cusps = np.linspace(0.9, -0.9, k + 1)
    scallops = [
        _ellipse((a + b) / 2, 0.0, abs(a - b) / 2, 0.12, n=10, a0=TAU, a1=np.pi)[1:]
        for a, b in zip(cusps[:-1], cusps[1:])
    ]
    parts = [
        _Part(np.array([(0.0, -0.6), (0.0, 0.62)]), "shaft", closed=False, width=0.05),
        _Part(_ellipse(0.13, 0.62, 0.13, 0.13, n=12, a0=np.pi, a1=0.0), "shaft", closed=False, width=0.05),
        _Part(np.concatenate([dome] + scallops), "canopy"),
    ]
    for c in cusps[1:-1]:
        parts.append(_Part(np.array([(0.0, -0.68), (c, 0.0)]), "rib", closed=False, width=0.02, detail=True))
    return parts


_SHAPES: dict[str, Callable] = {
    "apple": _apple, "boat": _boat, "car": _car, "clock": _clock, "cup": _cup, "envelope": _envelope,
    "fish": _fish, "heart": _heart, "house": _house, "key": _key, "lightbulb": _lightbulb,
    "mushroom": _mushroom, "star": _star, "sun": _sun, "tree": _tree, "umbrella": _umbrella,
}  # fmt: skip
EMBEDDED_CLASSES = tuple(sorted(_SHAPES))

# Base colours per class and part role; each photo jitters them.
_PALETTES = {
    "apple": {"body": [(200, 30, 30), (90, 170, 40), (230, 200, 40)], "stem": [(100, 60, 30)], "leaf": [(60, 150, 50)]},
    "boat": {"hull": [(120, 70, 40), (30, 60, 140), (200, 40, 40)], "mast": [(90, 60, 30)],
             "sail": [(245, 245, 240), (230, 60, 50), (250, 210, 80)]},
    "car": {"body": [(200, 30, 30), (30, 80, 180), (40, 40, 40), (230, 230, 230), (240, 190, 30)],
            "window": [(170, 210, 240)], "wheel": [(30, 30, 30)], "light": [(255, 240, 170)]},
    "clock": {"face": [(250, 250, 240), (240, 230, 200)], "rim": [(40, 40, 40), (150, 30, 30), (180, 150, 60)],
              "hand": [(20, 20, 20)], "tick": [(40, 40, 40)]},
    "cup": {"body": [(240, 240, 240), (200, 60, 60), (60, 120, 200), (250, 200, 60)], "rim": [(180, 180, 180)]},
    "envelope": {"paper": [(245, 240, 225), (210, 180, 130), (250, 250, 250)], "flap": [(150, 130, 100)],
                 "stamp": [(200, 50, 50), (50, 120, 200)]},
    "fish": {"body": [(250, 140, 30), (60, 130, 220), (240, 200, 40)], "fin": [(220, 90, 20), (40, 90, 180)],
             "eye": [(10, 10, 10)]},
    "heart": {"body": [(220, 20, 60), (250, 110, 160), (180, 0, 40)]},
    "house": {"wall": [(230, 200, 150), (200, 80, 60), (240, 240, 230)],
              "roof": [(150, 40, 30), (90, 60, 40), (60, 60, 70)],
              "door": [(100, 60, 30)], "window": [(170, 210, 240)]},
    "key": {"metal": [(210, 170, 50), (180, 180, 190), (160, 110, 60)]},
    "lightbulb": {"glass": [(255, 240, 150), (250, 250, 220)], "base": [(150, 150, 155)], "filament": [(200, 120, 20)]},
    "mushroom": {"cap": [(210, 30, 30), (160, 100, 50), (230, 180, 120)], "stem": [(240, 230, 210)],
                 "spot": [(250, 250, 250)]},
    "star": {"body": [(250, 210, 30), (240, 170, 20), (250, 230, 120)]},
    "sun": {"disk": [(250, 200, 30), (250, 150, 20)], "ray": [(250, 180, 30)]},
    "tree": {"canopy": [(50, 140, 50), (90, 160, 40), (30, 100, 40)], "trunk": [(110, 70, 40)]},
    "umbrella": {"canopy": [(200, 30, 40), (40, 80, 200), (250, 200, 30), (120, 40, 160)], "shaft": [(60, 60, 60)],
                 "rib": [(90, 90, 90)]},
}  # fmt: skip


# --- rendering ----------------------------------------------------------------------------------


def _pose(rng, size: int, scale_range) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """A random similarity-plus-aspect transform from unit coordinates to pixels, and its scale (px per unit)."""
    scale = rng.uniform(*scale_range) * size / 2
    aspect = rng.uniform(0.88, 1.12)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    angle = np.deg2rad(rng.uniform(-30, 30))
    c, s = np.cos(angle), np.sin(angle)
    slack = size / 2 - scale * 0.9
    centre = size / 2 + rng.uniform(-1, 1, 2) * max(slack, 0) * 0.8
    m = np.array([[c, s], [-s, c]]) * scale
    stretch = np.array([flip * aspect, 1 / aspect])
    return lambda pts: (pts * stretch) @ m + centre, scale


def _jitter_colour(rng, rgb) -> tuple:
    brightness = rng.uniform(0.8, 1.15)
    out = np.clip(np.asarray(rgb, float) * brightness + rng.uniform(-25, 25, 3), 0, 255)
    return tuple(int(v) for v in out)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `(yy, xx)` in [-0.5, 0.5), float32, shape `(size, size)` each."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return yy, xx


def _background(rng, size: int) -> np.ndarray:
    """`(size, size, 3)` float background: gradient, colour noise, stripes or checks."""
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    kind = int(rng.integers(4))
    yy, xx = _grid(size)
    yy, xx = yy + 0.5, xx + 0.5
    if kind == 0:  # two-colour linear gradient in a random direction
        a = rng.uniform(0, TAU)
        t = np.clip((np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    elif kind == 1:  # blurred colour noise, like an out-of-focus scene
        low = rng.uniform(0, 1, (6, 6)).astype(np.float32)
        t = np.asarray(Image.fromarray(low, mode="F").resize((size, size), Image.Resampling.BICUBIC))[..., None]
        t = np.clip(t, 0, 1)
    elif kind == 2:  # stripes
        a, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.3)
        t = (0.5 + 0.5 * np.sin(TAU * (np.cos(a) * xx + np.sin(a) * yy) / period))[..., None] * 0.5
    else:  # checks
        n = int(rng.integers(3, 9))
        t = (((xx * n).astype(int) + (yy * n).astype(int)) % 2)[..., None] * 0.35
    t = t.astype(np.float32)  # NumPy scalars would otherwise promote everything to float64
    return c1 * (1 - t) + c2 * t


def _draw_parts(draw: ImageDraw.ImageDraw, parts, to_px, scale, colours) -> None:
    for part in parts:
        pts = [tuple(p) for p in to_px(part.points)]
        if part.width == 0:
            draw.polygon(pts, fill=colours[part.role])
        else:
            if part.closed:
                pts = pts + pts[:2]  # overlap the start so the joint is drawn
            draw.line(pts, fill=colours[part.role], width=max(1, int(round(part.width * scale))), joint="curve")


def object_instance(class_name: str, rng: np.random.Generator, size: int = IMAGE_SIZE, scale_range=(0.55, 0.85)):
    """One object of `class_name` to draw several times: `(parts, pose)`, where `pose` is `(to_px, scale)` on
    the 2x drawing canvas of a `size` image. Passed to `render_photo` / `render_sketch`, it gives a photo and
    sketches of the *same* instance (the fine-grained pairs of `hf_sbir.data.fg_embedded`)."""
    return _SHAPES[class_name](rng), _pose(rng, size * _SUPERSAMPLE, scale_range)


def render_photo(class_name: str, rng: np.random.Generator, size: int = IMAGE_SIZE, instance=None) -> Image.Image:
    """One synthetic 'photo' of `class_name` (RGB, `size` x `size`); `instance` (from `object_instance`) fixes
    the object's parts and pose instead of drawing them from `rng`."""
    big = size * _SUPERSAMPLE
    base = _background(rng, size)
    clutter = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    cdraw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.uniform(0, size, 2)
        w, h = rng.uniform(size * 0.08, size * 0.3, 2)
        fill = tuple(int(v) for v in rng.uniform(0, 255, 3)) + (int(rng.uniform(90, 220)),)
        (cdraw.ellipse if rng.random() < 0.5 else cdraw.rectangle)([x - w, y - h, x + w, y + h], fill=fill)

    parts = _SHAPES[class_name](rng) if instance is None else instance[0]
    palette = _PALETTES[class_name]
    colours = {
        role: _jitter_colour(rng, choices[int(rng.integers(len(choices)))]) + (255,)
        for role, choices in palette.items()
    }
    to_px, scale = _pose(rng, big, (0.5, 0.85)) if instance is None else instance[1]
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    _draw_parts(ImageDraw.Draw(layer), parts, to_px, scale, colours)
    layer = layer.reduce(_SUPERSAMPLE)  # box down-sampling: fast, and enough anti-aliasing at 2x

    obj = np.asarray(layer, dtype=np.float32)
    alpha = obj[..., 3:] / np.float32(255)
    # Lighting: a linear ramp across the object plus a mottled texture, so parts are not flat fills.
    yy, xx = _grid(size)
    a = rng.uniform(0, TAU)
    ramp = 1 + rng.uniform(0.2, 0.5) * (float(np.cos(a)) * xx + float(np.sin(a)) * yy)
    mottle = np.asarray(
        Image.fromarray(rng.uniform(-1, 1, (12, 12)).astype(np.float32), mode="F").resize(
            (size, size), Image.Resampling.BICUBIC
        )
    )
    shade = (ramp * (1 + 0.07 * mottle))[..., None]
    rgb = np.clip(obj[..., :3] * shade, 0, 255)

    clut = np.asarray(clutter, dtype=np.float32)
    clut_alpha = clut[..., 3:] / np.float32(255)
    base = base * (1 - clut_alpha) + clut[..., :3] * clut_alpha
    shadow = Image.fromarray((alpha[..., 0] * 255).astype(np.uint8), mode="L").filter(ImageFilter.GaussianBlur(3))
    shift = tuple(int(v) for v in rng.integers(1, 5, 2))
    shadow = np.roll(np.asarray(shadow, dtype=np.float32) / np.float32(255), shift, axis=(0, 1))[..., None]
    base = base * (1 - 0.35 * shadow)
    out = base * (1 - alpha) + rgb * alpha
    out = out + 3.0 * rng.standard_normal(out.shape, dtype=np.float32)  # a little sensor noise
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="RGB")


def _wobbly(points: np.ndarray, rng, step: float, amplitude: float) -> np.ndarray:
    """Resample a polyline every ~`step` px and displace it sideways by smooth random noise."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    length = np.concatenate([[0], np.cumsum(seg)])
    if length[-1] < 1e-6:
        return points
    s = np.linspace(0, length[-1], max(2, int(length[-1] / step) + 1))
    pts = np.stack([np.interp(s, length, points[:, 0]), np.interp(s, length, points[:, 1])], 1)
    # Sum of two random low-frequency sines along the arc length: a slow hand tremor.
    u = s / max(length[-1], 1.0)
    noise = np.zeros((len(s), 2))
    for _ in range(2):
        freq, phase = rng.uniform(0.5, 3.0), rng.uniform(0, TAU, 2)
        noise += np.stack([np.sin(TAU * freq * u + phase[0]), np.sin(TAU * freq * u + phase[1])], 1)
    return pts + noise * amplitude / 2


def render_sketch(class_name: str, rng: np.random.Generator, size: int = IMAGE_SIZE, instance=None) -> Image.Image:
    """One synthetic hand-drawn-style sketch of `class_name` (grayscale, `size` x `size`); `instance` (from
    `object_instance`) fixes the object's parts and pose instead of drawing them from `rng`."""
    big = size * _SUPERSAMPLE
    if instance is None:
        parts = _SHAPES[class_name](rng)
        to_px, scale = _pose(rng, big, (0.6, 0.9))
    else:
        parts, (to_px, scale) = instance
    canvas = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(canvas)
    base_width = rng.uniform(1.3, 3.0) * _SUPERSAMPLE
    amplitude = rng.uniform(0.006, 0.02) * big
    for part in parts:
        if part.detail and rng.random() < 0.25:
            continue
        pts = to_px(part.points)
        if part.closed:
            # Close the outline, sometimes overshooting past the start like a quick hand does.
            extra = int(rng.integers(1, 3)) if rng.random() < 0.5 else 0
            pts = np.concatenate([pts, pts[: 1 + extra]])
        line = _wobbly(pts, rng, step=3.0 * _SUPERSAMPLE, amplitude=amplitude)
        if rng.random() < 0.12 and len(line) > 8:  # partial stroke
            keep = int(len(line) * rng.uniform(0.55, 0.9))
            start = int(rng.integers(0, len(line) - keep + 1))
            line = line[start : start + keep]
        width = max(1, int(round(base_width * rng.uniform(0.8, 1.2))))
        ink = int(rng.uniform(0, 60))
        draw.line([tuple(p) for p in line], fill=ink, width=width, joint="curve")
    return canvas.reduce(_SUPERSAMPLE)


def render_embedded_image(
    class_name: str, domain: str, index: int, seed: int = 0, size: int = IMAGE_SIZE
) -> Image.Image:
    """The `index`-th sketch or photo of `class_name`; a pure function of its arguments.

    Each image has its own generator, seeded by `(seed, class position, domain, index)`, so images
    do not depend on generation order.
    """
    if class_name not in _SHAPES:
        raise ValueError(f"Unknown embedded class {class_name!r}; classes: {', '.join(EMBEDDED_CLASSES)}")
    if domain not in ("sketch", "photo"):
        raise ValueError(f"domain must be 'sketch' or 'photo', got {domain!r}")
    rng = np.random.default_rng([seed, EMBEDDED_CLASSES.index(class_name), domain == "photo", index])
    return (render_photo if domain == "photo" else render_sketch)(class_name, rng, size)


def _relpath(class_name: str, domain: str, index: int) -> str:
    return f"{domain}/{class_name}/{class_name}_{index:02d}.png"


def _manifest(seed: int, per_class: int, size: int) -> dict:
    return {
        "version": EMBEDDED_VERSION,
        "seed": seed,
        "per_class": per_class,
        "size": size,
        "classes": list(EMBEDDED_CLASSES),
    }


def _write_images(out: Path, jobs, seed: int, size: int, num_threads: int) -> None:
    def work(job):
        class_name, domain, index = job
        path = out / _relpath(class_name, domain, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        render_embedded_image(class_name, domain, index, seed, size).save(tmp, format="PNG", compress_level=3)
        os.replace(tmp, path)  # atomic: a reader never sees half a file

    # PIL and NumPy release the GIL in their heavy loops, so threads give a real speed-up; every
    # image has its own generator, so the result does not depend on the order of execution.
    if num_threads > 1:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            list(pool.map(work, jobs))
    else:
        for job in jobs:
            work(job)


def generate_embedded_default(
    output_dir: Union[str, os.PathLike],
    seed: int = 0,
    per_class: int = IMAGES_PER_CLASS,
    size: int = IMAGE_SIZE,
    num_threads: Optional[int] = None,
) -> Path:
    """Write the whole set as `<output_dir>/{sketch,photo}/<class>/<class>_<NN>.png` plus `manifest.json`."""
    out = Path(output_dir)
    jobs = [(c, d, i) for c in EMBEDDED_CLASSES for d in ("sketch", "photo") for i in range(per_class)]
    _write_images(out, jobs, seed, size, num_threads or min(2, os.cpu_count() or 1))
    (out / "manifest.json").write_text(json.dumps(_manifest(seed, per_class, size), indent=2) + "\n", encoding="utf-8")
    return out


def _cache_root() -> Path:
    return Path(os.environ.get("HF_SBIR_CACHE") or Path.home() / ".cache" / "hf_sbir").expanduser()


def _manifest_matches(folder: Path, seed: int, per_class: int, size: int) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8")) == _manifest(seed, per_class, size)
    except (OSError, json.JSONDecodeError):
        return False


def embedded_default_dir(
    seed: int = 0,
    per_class: int = IMAGES_PER_CLASS,
    size: int = IMAGE_SIZE,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """Folder of the cached PNGs, generated first if missing.

    The default set lives in `<cache>/embedded-<version>`; other settings get a suffixed folder.
    A folder without a matching `manifest.json` is generated from scratch in a temporary folder
    and renamed into place; a folder with a matching manifest but some files missing gets just
    those files redrawn (byte-identical, since each image is a pure function of its seed).
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    name = f"embedded-{EMBEDDED_VERSION}"
    if (seed, per_class, size) != (0, IMAGES_PER_CLASS, IMAGE_SIZE):
        name += f"-seed{seed}-n{per_class}-s{size}"
    folder = root / name
    if _manifest_matches(folder, seed, per_class, size):
        jobs = [(c, d, i) for c in EMBEDDED_CLASSES for d in ("sketch", "photo") for i in range(per_class)]
        missing = [job for job in jobs if not (folder / _relpath(*job)).is_file()]
        if missing:
            _write_images(folder, missing, seed, size, num_threads=1)
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        generate_embedded_default(tmp, seed, per_class, size)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process renamed its copy into place first; use that one.
            if not _manifest_matches(folder, seed, per_class, size):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_embedded_default(
    split: Optional[SplitLike] = "embedded",
    gzs: bool = False,
    seed: int = 0,
    gzs_seed: int = 0,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    on_error: str = "warn",
) -> DatasetDict:
    """Load the embedded synthetic set (generating and caching it on first use).

    Args:
        split: zero-shot split (default `"embedded"`: 12 seen / 4 unseen classes); `None` gives one `all` split.
        gzs: generalised zero-shot protocol (20% of each seen class's photos join the test gallery).
        seed: generation seed of the images (0 is the cached default).
        gzs_seed: seed of the GZS hold-out.
        cache_dir: cache root instead of `$HF_SBIR_CACHE` / `~/.cache/hf_sbir`.
        on_error: as in `load_sbir_folder`.

    Returns:
        `DatasetDict` with columns `image`, `label`, `domain`, `id` (ids like `sketch/cup/cup_00.png`).
    """
    root = embedded_default_dir(seed=seed, cache_dir=cache_dir)
    records = scan_class_folders(folder_class_dirs(root, "domain_first"))
    return build_dataset_dict(
        records, root, dataset_name="embedded", split=split, gzs=gzs, seed=gzs_seed, on_error=on_error
    )
