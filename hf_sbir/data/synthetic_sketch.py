"""Synthetic sketch views: a line-drawing generator for rendered views, and a tiny procedural renderer.

The paper fine-tunes on synthetic sketches rendered from 3D shapes in two NPR styles (its "NPR" and
"Anime" styles) instead of human sketches. This module gives the package an offline stand-in:

* `synthesize_sketch(view, depth=None, style=..., seed=...)` turns any rendered view (RGB or
  grayscale image) and/or a depth map into a black-on-white line drawing, from image gradients
  (a Canny-like detector written with numpy/scipy: Gaussian smoothing, Sobel gradients, non-maximum
  suppression, hysteresis) and depth discontinuities (occluding contours). Styles:

  - `"clean"`: thin (1 px) clean contours — the NPR-like style; deterministic, no randomness;
  - `"stylized"`: thicker, wobbly strokes of varying width and darkness, some dropped, some drawn
    twice — an "Anime"/hand-drawn-like style; deterministic for a seed;
  - `"pencil"`: several light, jittered thin passes over the same contours (a sketchy look).

* `render_shape_view(shape, azimuth, elevation)` is a procedural "renderer": it ray-marches a
  shape made of signed-distance primitives (boxes, cylinders, capped cones, capsules, tori) with
  an orthographic camera and returns a shaded RGB image, a depth map and a mask. `make_shape(cls,
  seed)` builds random instances of a few shape classes (chair, lamp, table, mug), so the method
  runs end to end offline with many distinct instances per class. It is a test/demo device, not a
  substitute for real 3D data (ShapeNet / AmateurSketch renderings).

Everything is numpy/scipy/PIL; the same (inputs, style, seed) give byte-identical drawings.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

SKETCH_STYLES = ("clean", "stylized", "pencil")
SHAPE_CLASSES = ("chair", "lamp", "table", "mug")

__all__ = [
    "SHAPE_CLASSES",
    "SKETCH_STYLES",
    "Primitive",
    "RenderedView",
    "Shape",
    "SyntheticSketchGenerator",
    "canny_edges",
    "depth_edges",
    "draw_edges",
    "make_shape",
    "render_shape_view",
    "render_views",
    "sketch_edges",
    "synthesize_sketch",
    "view_angles",
]


# ------------------------------------------------------------------------------------------------
# line drawings from views
# ------------------------------------------------------------------------------------------------
def _as_gray(view) -> np.ndarray:
    """PIL image or array (H, W), (H, W, 1|3|4), uint8 or float in [0, 1] -> float64 (H, W) in [0, 1]."""
    if isinstance(view, Image.Image):
        if view.mode in ("RGBA", "LA", "PA") or (view.mode == "P" and "transparency" in view.info):
            rgba = view.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            view = Image.alpha_composite(background, rgba)
        return np.asarray(view.convert("L"), dtype=np.float64) / 255.0
    array = np.asarray(view)
    if array.ndim == 3:
        if array.shape[2] == 4:
            alpha = array[..., 3:4].astype(np.float64) / (255.0 if array.dtype == np.uint8 else 1.0)
            rgb = array[..., :3].astype(np.float64) / (255.0 if array.dtype == np.uint8 else 1.0)
            array = rgb * alpha + (1.0 - alpha)
        elif array.dtype == np.uint8:
            array = array.astype(np.float64) / 255.0
        array = array[..., :3] @ np.array([0.299, 0.587, 0.114])[: array.shape[2]] if array.shape[2] >= 3 else array[..., 0]
        return np.clip(array.astype(np.float64), 0.0, 1.0)
    if array.ndim != 2:
        raise ValueError(f"view must be an image or an (H, W[, C]) array; got shape {array.shape}.")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def _non_maximum_suppression(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep pixels whose gradient magnitude is a maximum along the (quantised) gradient direction."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    padded = np.pad(magnitude, 1)
    height, width = magnitude.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    keep = np.zeros_like(magnitude, dtype=bool)
    # direction bins: 0 deg (gradient along x: compare left/right), 45, 90, 135.
    for low, high, (dy1, dx1), (dy2, dx2) in (
        (-1.0, 22.5, (0, 1), (0, -1)),
        (157.5, 181.0, (0, 1), (0, -1)),
        (22.5, 67.5, (1, 1), (-1, -1)),
        (67.5, 112.5, (1, 0), (-1, 0)),
        (112.5, 157.5, (1, -1), (-1, 1)),
    ):
        sector = (angle >= low) & (angle < high)
        keep |= sector & (magnitude >= shifted(dy1, dx1)) & (magnitude >= shifted(dy2, dx2))
    return keep


def canny_edges(gray: np.ndarray, sigma: float = 1.0, low: float = 0.04, high: float = 0.1) -> np.ndarray:
    """A Canny-like edge map of a float image in [0, 1]: bool (H, W), edges 1 px wide.

    Gaussian smoothing (`sigma` px), Sobel gradients (divided by 4, so a unit step between two
    flat regions gives a magnitude of about 1 before smoothing), non-maximum suppression, and
    hysteresis: weak pixels (`>= low`) are kept only in 8-connected components that hold a strong
    pixel (`>= high`)."""
    image = ndimage.gaussian_filter(np.asarray(gray, dtype=np.float64), sigma) if sigma > 0 else np.asarray(gray, float)
    gx = ndimage.sobel(image, axis=1, mode="nearest") / 4.0
    gy = ndimage.sobel(image, axis=0, mode="nearest") / 4.0
    magnitude = np.hypot(gx, gy)
    thin = _non_maximum_suppression(magnitude, gx, gy) & (magnitude >= low)
    labels, count = ndimage.label(thin, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return thin
    strong = np.zeros(count + 1, dtype=bool)
    strong[np.unique(labels[thin & (magnitude >= high)])] = True
    strong[0] = False
    return strong[labels]


def depth_edges(depth: np.ndarray, threshold: float = 0.04, sigma: float = 0.5) -> np.ndarray:
    """Occluding contours of a depth map: bool (H, W), 1 px wide.

    Background pixels are the non-finite ones (inf / nan) or, when every value is finite, none.
    Depth is normalised to [0, 1] over the object and the background is placed beyond it (at 1.5),
    so the silhouette is the strongest discontinuity; `threshold` is the smallest jump, as a
    fraction of the object's depth range, that makes a contour (smooth slopes stay below it)."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be an (H, W) array; got shape {depth.shape}.")
    finite = np.isfinite(depth)
    if not finite.any():
        return np.zeros(depth.shape, dtype=bool)
    near, far = depth[finite].min(), depth[finite].max()
    scale = max(far - near, 1e-8)
    normalised = np.where(finite, (depth - near) / scale, 1.5)
    return canny_edges(normalised, sigma=sigma, low=threshold, high=threshold * 2.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return noise / max(noise.std(), 1e-8)


def _drop_components(edges: np.ndarray, rng: np.random.Generator, drop_prob: float, min_size: int) -> np.ndarray:
    labels, count = ndimage.label(edges, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return edges
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = (sizes >= min_size) & (rng.random(count + 1) >= drop_prob)
    keep[0] = False
    if not keep[1:].any():  # never erase the whole drawing
        keep[int(np.argmax(sizes[1:])) + 1] = True
    return keep[labels]


def _warp(field_: np.ndarray, dy: np.ndarray, dx: np.ndarray, order: int = 1) -> np.ndarray:
    height, width = field_.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return ndimage.map_coordinates(field_, [yy + dy, xx + dx], order=order, mode="constant", cval=0.0)


def _stroke(edges: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """Anti-aliased ink coverage in [0, 1] of strokes of (per-pixel) half-width `width` around `edges`."""
    if not edges.any():
        return np.zeros(edges.shape)
    distance = ndimage.distance_transform_edt(~edges)
    return np.clip(np.asarray(width) + 0.5 - distance, 0.0, 1.0)


def _render_ink(ink: np.ndarray) -> Image.Image:
    """Ink coverage/darkness in [0, 1] -> PIL "L", black ink on white."""
    return Image.fromarray(np.round(255.0 * (1.0 - np.clip(ink, 0.0, 1.0))).astype(np.uint8), mode="L")


def sketch_edges(
    view=None,
    depth: np.ndarray | None = None,
    *,
    sigma: float = 1.0,
    low_threshold: float = 0.04,
    high_threshold: float = 0.1,
    depth_threshold: float = 0.04,
) -> np.ndarray:
    """The contours a drawing is made of: bool (H, W), 1 px wide — image edges of `view` (`canny_edges`) united
    with the depth discontinuities of `depth` (`depth_edges`). Style-independent, so it can be computed once
    per view and drawn in several styles with `draw_edges`."""
    if view is None and depth is None:
        raise ValueError("A line drawing needs a view image, a depth map, or both.")
    edges = None
    if view is not None:
        edges = canny_edges(_as_gray(view), sigma=sigma, low=low_threshold, high=high_threshold)
    if depth is not None:
        contours = depth_edges(depth, threshold=depth_threshold)
        if edges is not None and contours.shape != edges.shape:
            raise ValueError(f"view {edges.shape} and depth {contours.shape} differ in size.")
        edges = contours if edges is None else (edges | contours)
    return edges


def synthesize_sketch(
    view=None,
    depth: np.ndarray | None = None,
    style: str = "clean",
    seed: int = 0,
    *,
    sigma: float = 1.0,
    low_threshold: float = 0.04,
    high_threshold: float = 0.1,
    depth_threshold: float = 0.04,
    line_width: float | None = None,
    jitter: float = 1.2,
    drop_prob: float = 0.1,
) -> Image.Image:
    """Turn a rendered view and/or a depth map into a line drawing (PIL `"L"`, black ink on white).

    Args:
        view: the rendered view, a PIL image or an array (H, W[, 3|4]) (uint8, or float in [0, 1]);
            its luminance edges give silhouettes, creases (shading discontinuities) and details.
        depth (`np.ndarray` of shape `(H, W)`, *optional*): depth map; non-finite values are background.
            Its discontinuities give occluding contours. At least one of `view` / `depth` is needed.
        style (`str`): `"clean"` (thin contours, no randomness), `"stylized"` (thick, jittered, varying
            width and darkness, some strokes dropped or doubled) or `"pencil"` (several light jittered
            thin passes).
        seed (`int`): seeds the randomness of the jittered styles; same inputs + seed = same drawing.
        sigma, low_threshold, high_threshold: the image edge detector (`canny_edges`).
        depth_threshold: smallest depth jump (fraction of the object's depth range) that makes a contour.
        line_width, jitter, drop_prob: stroke settings, see `draw_edges`.
    """
    if style not in SKETCH_STYLES:
        raise ValueError(f"Unknown sketch style {style!r}; choose one of {SKETCH_STYLES}.")
    edges = sketch_edges(
        view, depth, sigma=sigma, low_threshold=low_threshold, high_threshold=high_threshold, depth_threshold=depth_threshold
    )
    return draw_edges(edges, style, seed, line_width=line_width, jitter=jitter, drop_prob=drop_prob)


def draw_edges(
    edges: np.ndarray,
    style: str = "clean",
    seed: int = 0,
    *,
    line_width: float | None = None,
    jitter: float = 1.2,
    drop_prob: float = 0.1,
) -> Image.Image:
    """Draw a contour map (`sketch_edges`) in a style: PIL `"L"`, black ink on white.

    Args:
        edges: bool (H, W) contour pixels.
        style, seed: as `synthesize_sketch`.
        line_width (`float`, *optional*): stroke half-width in px; defaults to 0.5 ("clean"),
            0.7 to 1.7 varying ("stylized"), 0.5 ("pencil").
        jitter (`float`): displacement amplitude in px of the jittered styles.
        drop_prob (`float`): chance that a connected stroke is left out in the jittered styles.
    """
    if style not in SKETCH_STYLES:
        raise ValueError(f"Unknown sketch style {style!r}; choose one of {SKETCH_STYLES}.")
    edges = np.asarray(edges, dtype=bool)
    shape = edges.shape
    rng = np.random.default_rng(seed)

    if style == "clean":
        return _render_ink(_stroke(edges, 0.5 if line_width is None else line_width))

    smooth = max(2.0, min(shape) / 12.0)  # wobble wavelength grows with the canvas
    if style == "stylized":
        kept = _drop_components(edges, rng, drop_prob, min_size=3)
        dy, dx = jitter * _smooth_noise(rng, shape, smooth), jitter * _smooth_noise(rng, shape, smooth)
        wobbly = _warp(kept.astype(np.float64), dy, dx) > 0.25
        base = 1.2 if line_width is None else line_width
        width = np.clip(base + 0.6 * _smooth_noise(rng, shape, smooth), 0.6 * base, 1.4 * base)
        darkness = np.clip(0.85 + 0.15 * _smooth_noise(rng, shape, smooth), 0.55, 1.0)
        ink = _stroke(wobbly, width) * darkness
        # A second, offset pass over about a third of the strokes: the "drawn twice" look.
        again = _drop_components(kept, rng, 0.66, min_size=3)
        dy2 = dy + 0.8 * jitter * _smooth_noise(rng, shape, smooth)
        dx2 = dx + 0.8 * jitter * _smooth_noise(rng, shape, smooth)
        second = _warp(again.astype(np.float64), dy2, dx2) > 0.25
        ink = np.maximum(ink, 0.6 * _stroke(second, 0.5 * base))
        return _render_ink(ink)

    # pencil: several light, thin, independently jittered passes.
    ink = np.zeros(shape)
    width = 0.5 if line_width is None else line_width
    for _ in range(3):
        kept = _drop_components(edges, rng, drop_prob, min_size=2)
        dy, dx = 0.7 * jitter * _smooth_noise(rng, shape, smooth), 0.7 * jitter * _smooth_noise(rng, shape, smooth)
        passed = _warp(kept.astype(np.float64), dy, dx) > 0.25
        ink = 1.0 - (1.0 - ink) * (1.0 - 0.55 * _stroke(passed, width))
    return _render_ink(ink)


@dataclass
class SyntheticSketchGenerator:
    """`synthesize_sketch` with fixed settings: `generator(view, depth=None, seed=None)`.

    Args:
        style: one of `SKETCH_STYLES`.
        seed: default seed (a call's `seed` overrides it).
        options: keyword arguments for `synthesize_sketch` (thresholds, `line_width`, `jitter`, ...).
    """

    style: str = "clean"
    seed: int = 0
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.style not in SKETCH_STYLES:
            raise ValueError(f"Unknown sketch style {self.style!r}; choose one of {SKETCH_STYLES}.")

    def __call__(self, view=None, depth=None, seed: int | None = None) -> Image.Image:
        return synthesize_sketch(view, depth, style=self.style, seed=self.seed if seed is None else seed, **self.options)


# ------------------------------------------------------------------------------------------------
# a tiny procedural renderer: signed-distance primitives, orthographic ray marching
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Primitive:
    """One solid part. `kind` and `params` (object space, y up, shapes fit roughly in [-1, 1]^3):

    - `"box"`: center (3), half sizes (3);
    - `"cylinder"`: center (3), radius, half height (vertical axis);
    - `"cone"`: center (3), bottom radius, top radius, half height (vertical capped cone);
    - `"capsule"`: end a (3), end b (3), radius;
    - `"torus"`: center (3), major radius, minor radius, axis ("x", "y" or "z": the ring's normal);
    - `"sphere"`: center (3), radius.
    """

    kind: str
    params: tuple


@dataclass(frozen=True)
class Shape:
    """A 3D shape: its class name, the seed it was drawn from, and its parts."""

    name: str
    seed: int
    primitives: tuple[Primitive, ...]
    color: tuple[float, float, float] = (0.75, 0.72, 0.68)


def _sdf(primitive: Primitive, p: np.ndarray) -> np.ndarray:
    """Signed distance of points p (N, 3) to one primitive."""
    kind, a = primitive.kind, primitive.params
    if kind == "box":
        q = np.abs(p - np.asarray(a[0])) - np.asarray(a[1])
        return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)
    if kind == "sphere":
        return np.linalg.norm(p - np.asarray(a[0]), axis=1) - a[1]
    if kind == "cylinder":
        c, radius, half = np.asarray(a[0]), a[1], a[2]
        d = np.stack([np.hypot(p[:, 0] - c[0], p[:, 2] - c[2]) - radius, np.abs(p[:, 1] - c[1]) - half], axis=1)
        return np.minimum(d.max(axis=1), 0.0) + np.linalg.norm(np.maximum(d, 0.0), axis=1)
    if kind == "cone":  # capped cone (Inigo Quilez's formula), vertical axis
        c, r1, r2, h = np.asarray(a[0]), a[1], a[2], a[3]
        qx, qy = np.hypot(p[:, 0] - c[0], p[:, 2] - c[2]), p[:, 1] - c[1]
        k1 = np.array([r2, h])
        k2 = np.array([r2 - r1, 2.0 * h])
        ca_x = qx - np.minimum(qx, np.where(qy < 0.0, r1, r2))
        ca_y = np.abs(qy) - h
        t = np.clip(((k1[0] - qx) * k2[0] + (k1[1] - qy) * k2[1]) / (k2 @ k2), 0.0, 1.0)
        cb_x, cb_y = qx - k1[0] + k2[0] * t, qy - k1[1] + k2[1] * t
        sign = np.where((cb_x < 0.0) & (ca_y < 0.0), -1.0, 1.0)
        return sign * np.sqrt(np.minimum(ca_x**2 + ca_y**2, cb_x**2 + cb_y**2))
    if kind == "capsule":
        pa, ba = p - np.asarray(a[0]), np.asarray(a[1]) - np.asarray(a[0])
        h = np.clip(pa @ ba / max(ba @ ba, 1e-12), 0.0, 1.0)
        return np.linalg.norm(pa - h[:, None] * ba, axis=1) - a[2]
    if kind == "torus":
        c, major, minor, axis = np.asarray(a[0]), a[1], a[2], a[3]
        q = p - c
        normal = "xyz".index(axis)
        in_plane = [i for i in range(3) if i != normal]
        ring = np.hypot(q[:, in_plane[0]], q[:, in_plane[1]]) - major
        return np.hypot(ring, q[:, normal]) - minor
    raise ValueError(f"Unknown primitive kind {kind!r}.")


def _scene_sdf(shape: Shape, p: np.ndarray) -> np.ndarray:
    return np.min(np.stack([_sdf(prim, p) for prim in shape.primitives]), axis=0)


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _chair(rng: np.random.Generator) -> list[Primitive]:
    width, depth, seat_y, thick = _u(rng, 0.5, 0.8), _u(rng, 0.45, 0.75), _u(rng, -0.15, 0.05), _u(rng, 0.04, 0.09)
    back_h, leg = _u(rng, 0.45, 0.85), _u(rng, 0.03, 0.06)
    parts = [Primitive("box", ((0.0, seat_y, 0.0), (width / 2, thick / 2, depth / 2)))]
    back_z = -depth / 2 + thick / 2
    if rng.random() < 0.5:  # solid back
        parts.append(Primitive("box", ((0.0, seat_y + back_h / 2, back_z), (width / 2, back_h / 2, thick / 2))))
    else:  # two posts and a top rail
        for x in (-width / 2 + leg, width / 2 - leg):
            parts.append(Primitive("box", ((x, seat_y + back_h / 2, back_z), (leg, back_h / 2, leg))))
        parts.append(Primitive("box", ((0.0, seat_y + back_h - 0.06, back_z), (width / 2, 0.06, thick / 2))))
    floor = -0.9
    if rng.random() < 0.75:  # four legs
        for x in (-width / 2 + leg, width / 2 - leg):
            for z in (-depth / 2 + leg, depth / 2 - leg):
                parts.append(Primitive("box", ((x, (seat_y + floor) / 2, z), (leg, (seat_y - floor) / 2, leg))))
    else:  # pedestal with a star base
        parts.append(Primitive("cylinder", ((0.0, (seat_y + floor) / 2, 0.0), 1.3 * leg, (seat_y - floor) / 2)))
        for angle in np.linspace(0, 2 * np.pi, 5, endpoint=False) + rng.uniform(0, np.pi):
            end = (0.4 * width * math.cos(angle), floor + 0.03, 0.4 * width * math.sin(angle))
            parts.append(Primitive("capsule", ((0.0, floor + 0.03, 0.0), end, 0.035)))
    if rng.random() < 0.4:  # arm rests
        arm_h = _u(rng, 0.15, 0.3)
        for x in (-width / 2, width / 2):
            parts.append(Primitive("box", ((x, seat_y + arm_h, 0.0), (0.03, 0.03, depth / 2))))
            parts.append(Primitive("box", ((x, seat_y + arm_h / 2, depth / 2 - 0.03), (0.03, arm_h / 2, 0.03))))
    return parts


def _lamp(rng: np.random.Generator) -> list[Primitive]:
    floor = -0.9
    parts = []
    if rng.random() < 0.5:
        base_r = _u(rng, 0.2, 0.4)
        parts.append(Primitive("cylinder", ((0.0, floor + 0.04, 0.0), base_r, 0.04)))
    else:
        base = _u(rng, 0.15, 0.3)
        parts.append(Primitive("box", ((0.0, floor + 0.04, 0.0), (base, 0.04, base))))
    top_y = _u(rng, 0.2, 0.6)
    pole = _u(rng, 0.02, 0.04)
    if rng.random() < 0.5:  # straight pole, shade on top
        parts.append(Primitive("capsule", ((0.0, floor, 0.0), (0.0, top_y, 0.0), pole)))
        head = (0.0, top_y, 0.0)
    else:  # bent arm
        elbow = (_u(rng, -0.35, 0.35), (floor + top_y) / 2 + _u(rng, -0.1, 0.2), _u(rng, -0.2, 0.2))
        head = (_u(rng, -0.4, 0.4), top_y, _u(rng, -0.2, 0.2))
        parts.append(Primitive("capsule", ((0.0, floor, 0.0), elbow, pole)))
        parts.append(Primitive("capsule", (elbow, head, pole)))
        parts.append(Primitive("sphere", (elbow, 1.6 * pole)))
    shade_h = _u(rng, 0.15, 0.35)
    r_bottom, r_top = _u(rng, 0.2, 0.45), _u(rng, 0.08, 0.3)
    center = (head[0], head[1] + shade_h * 0.6, head[2])
    if rng.random() < 0.7:
        parts.append(Primitive("cone", (center, r_bottom, r_top, shade_h)))
    else:
        parts.append(Primitive("sphere", (center, 0.6 * r_bottom + 0.1)))
    return parts


def _table(rng: np.random.Generator) -> list[Primitive]:
    top_y, thick, floor = _u(rng, 0.0, 0.3), _u(rng, 0.04, 0.1), -0.9
    parts = []
    if rng.random() < 0.5:
        width, depth = _u(rng, 0.7, 1.0), _u(rng, 0.45, 0.8)
        parts.append(Primitive("box", ((0.0, top_y, 0.0), (width / 2, thick / 2, depth / 2))))
        leg = _u(rng, 0.03, 0.07)
        for x in (-width / 2 + leg, width / 2 - leg):
            for z in (-depth / 2 + leg, depth / 2 - leg):
                parts.append(Primitive("box", ((x, (top_y + floor) / 2, z), (leg, (top_y - floor) / 2, leg))))
    else:
        radius = _u(rng, 0.4, 0.8)
        parts.append(Primitive("cylinder", ((0.0, top_y, 0.0), radius, thick / 2)))
        parts.append(Primitive("cylinder", ((0.0, (top_y + floor) / 2, 0.0), _u(rng, 0.04, 0.1), (top_y - floor) / 2)))
        parts.append(Primitive("cylinder", ((0.0, floor + 0.03, 0.0), 0.5 * radius, 0.03)))
    return parts


def _mug(rng: np.random.Generator) -> list[Primitive]:
    radius, half = _u(rng, 0.3, 0.5), _u(rng, 0.35, 0.6)
    taper = _u(rng, 0.7, 1.1)
    parts = [Primitive("cone", ((0.0, 0.0, 0.0), radius, radius * taper, half))]
    handle_r = _u(rng, 0.15, 0.3)
    parts.append(Primitive("torus", ((radius * (1 + taper) / 2 + 0.02, _u(rng, -0.15, 0.15), 0.0), handle_r, 0.045, "z")))
    if rng.random() < 0.4:
        parts.append(Primitive("cylinder", ((0.0, -half + 0.02, 0.0), radius * 1.15, 0.03)))
    return parts


_BUILDERS = {"chair": _chair, "lamp": _lamp, "table": _table, "mug": _mug}
_COLORS = {"chair": (0.78, 0.62, 0.45), "lamp": (0.80, 0.80, 0.70), "table": (0.70, 0.55, 0.40), "mug": (0.55, 0.65, 0.80)}


def make_shape(name: str, seed: int) -> Shape:
    """A random instance of a shape class (`SHAPE_CLASSES`); the same (name, seed) gives the same shape."""
    if name not in _BUILDERS:
        raise ValueError(f"Unknown shape class {name!r}; choose one of {SHAPE_CLASSES}.")
    rng = np.random.default_rng([zlib.crc32(name.encode()), int(seed)])
    return Shape(name=name, seed=int(seed), primitives=tuple(_BUILDERS[name](rng)), color=_COLORS[name])


@dataclass
class RenderedView:
    """One rendered view.

    Args:
        image (`PIL.Image.Image`): shaded RGB rendering, white background.
        depth (`np.ndarray` of shape `(H, W)`): distance along the view ray; `inf` on the background.
        mask (`np.ndarray` of shape `(H, W)`): True on the object.
        azimuth, elevation (`float`): camera angles in degrees.
    """

    image: Image.Image
    depth: np.ndarray
    mask: np.ndarray
    azimuth: float
    elevation: float


def render_shape_view(
    shape: Shape,
    azimuth: float = 30.0,
    elevation: float = 20.0,
    size: int = 128,
    scale: float = 1.0,
    steps: int = 64,
) -> RenderedView:
    """Ray-march `shape` from a camera at (`azimuth`, `elevation`) degrees (orthographic, looking at
    the origin), Lambert-shaded with a key and a fill light on a white background.

    Args:
        size: output side in pixels.
        scale: object size on the canvas; 1.0 frames [-1.25, 1.25]^2 of object space.
        steps: sphere-tracing iterations.
    """
    az, el = math.radians(azimuth), math.radians(elevation)
    forward = -np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    extent = 1.25 / scale
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    u, v = np.meshgrid(coords * extent, -coords * extent)
    origins = u.reshape(-1, 1) * right + v.reshape(-1, 1) * up - 3.0 * forward
    t = np.zeros(size * size)
    hit = np.zeros(size * size, dtype=bool)
    alive = np.ones(size * size, dtype=bool)
    far = 6.0
    for _ in range(steps):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        d = _scene_sdf(shape, origins[idx] + t[idx, None] * forward)
        t[idx] += d
        done = d < 1e-3
        hit[idx[done]] = True
        alive[idx[done | (t[idx] > far)]] = False
    points = origins + t[:, None] * forward
    eps = 1e-3
    normals = np.zeros_like(points)
    idx = np.flatnonzero(hit)
    if idx.size:
        for axis in range(3):
            offset = np.zeros(3)
            offset[axis] = eps
            normals[idx, axis] = _scene_sdf(shape, points[idx] + offset) - _scene_sdf(shape, points[idx] - offset)
        normals[idx] /= np.maximum(np.linalg.norm(normals[idx], axis=1, keepdims=True), 1e-12)
    key = np.array([0.4, 0.8, 0.5]) @ np.stack([right, up, -forward])
    key /= np.linalg.norm(key)
    fill = -forward
    light = 0.25 + 0.6 * np.clip(normals @ key, 0.0, None) + 0.2 * np.clip(normals @ fill, 0.0, None)
    rgb = np.ones((size * size, 3))
    rgb[hit] = np.clip(light[hit, None] * np.asarray(shape.color)[None], 0.0, 1.0)
    depth = np.where(hit, t, np.inf).reshape(size, size)
    image = Image.fromarray(np.round(255 * rgb.reshape(size, size, 3)).astype(np.uint8), mode="RGB")
    return RenderedView(image=image, depth=depth, mask=hit.reshape(size, size), azimuth=azimuth, elevation=elevation)


def view_angles(num_views: int, elevation: float = 20.0, start: float = 30.0) -> list[tuple[float, float]]:
    """`num_views` (azimuth, elevation) pairs evenly spaced in azimuth at a fixed elevation (the paper's
    sketches are drawn from about 20 degrees above the horizon)."""
    return [((start + 360.0 * i / num_views) % 360.0, elevation) for i in range(num_views)]


def render_views(shapes: Sequence[Shape], angles: Sequence[tuple[float, float]], size: int = 128, scale: float = 1.0) -> list[RenderedView]:
    """Every shape from every angle, shape-major: item `s * len(angles) + a`."""
    return [render_shape_view(shape, az, el, size=size, scale=scale) for shape in shapes for az, el in angles]
