"""The sketch clean-up steps: small pure functions on PIL images, and the per-domain recipe that chains them.

Each step expects (or produces) black ink on a white background, mode `"L"`:

    to_grayscale_ink -> ink_bbox_crop -> pad_to_square -> thicken_strokes      (category-level models)
    to_grayscale_ink -> scale_normalize -> thicken_strokes                      (3D-shape sketch views)

This module depends on PIL and numpy only, on purpose: it is the one home of these steps for both
`hf_sbir.data.processing.SbirImageTransform` (training, evaluation) and
`hf_sbir.image_processing_sbir.SbirImageProcessor`, whose saved copy (remote code next to a model's
`config.json`) must run where hf-sbir is not installed. Keep its imports to PIL and numpy.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
from PIL import Image, ImageFilter, ImageOps

DOMAINS = ("sketch", "photo", "view")


class EmptySketchError(ValueError):
    """A sketch with no ink pixels: nothing to crop, and nothing a model could match."""


def _where(img: Image.Image) -> str:
    # PIL keeps the source path on images opened from a file; it is lost after convert().
    filename = getattr(img, "filename", "")
    return f" ({filename})" if filename else ""


def to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit and 32-bit greyscale images (modes `I;16*`, `I`, `F`) to 8-bit `"L"`; other modes pass.

    PIL's own `convert("L")`/`convert("RGB")` clips these at 255, so a 16-bit photo would become pure
    white. `I;16` is scaled by 1/257 (65535 -> 255); `I` by 1/257 only when it holds values above 255
    (PNG 16-bit greyscale may open as `I`); `F` in [0, 1] is scaled by 255, otherwise clipped.
    """
    if not (img.mode.startswith("I;16") or img.mode in ("I", "F")):
        return img
    a = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and a.size and a.max() > 255):
        a = a / 257.0
    elif img.mode == "F" and a.size and a.max() <= 1.0:
        a = a * 255.0
    out = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), mode="L")
    out.filename = getattr(img, "filename", "")  # keep the source path for error messages (see `_where`)
    return out


def to_grayscale_ink(img: Image.Image) -> Image.Image:
    """Convert a sketch to mode `"L"`, dark ink on a light background.

    Transparent pixels are composited onto white first (SVG renderings often have an alpha
    background). The image is inverted when its border is darker than mid-grey, i.e. when the ink
    is light on a dark background; the border is the best cheap estimate of the background.
    """
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    gray = img.convert("L")
    a = np.asarray(gray)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() < 128:
        gray = ImageOps.invert(gray)
    return gray


def threshold(img: Image.Image, level: int = 128) -> Image.Image:
    """Binarise a grayscale sketch: pixels darker than `level` become ink (0), the rest white (255)."""
    a = np.asarray(img.convert("L"))
    return Image.fromarray(np.where(a < level, 0, 255).astype(np.uint8), mode="L")


def ink_bbox(img: Image.Image, ink_threshold: int = 200) -> Optional[tuple[int, int, int, int]]:
    """Bounding box `(left, upper, right, lower)` (right/lower exclusive) of pixels darker than `ink_threshold`.

    Returns `None` for an image without ink.
    """
    ink = np.asarray(img.convert("L")) < ink_threshold
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def ink_bbox_crop(img: Image.Image, margin: Union[int, float] = 0.05, ink_threshold: int = 200) -> Image.Image:
    """Crop a black-on-white sketch to the bounding box of its ink, plus a white margin.

    Args:
        img: sketch, dark ink on light background (any mode; the crop keeps the mode).
        margin: white border kept around the ink; an `int` is pixels, a `float` a fraction of the
            longer side of the ink box. The margin is added as white even where the ink touches
            the image edge.
        ink_threshold: pixels darker than this (on the grayscale image) count as ink; 200 keeps
            faint pencil strokes and anti-aliased edges.

    Returns:
        image of size `(box_w + 2 * m, box_h + 2 * m)`.

    Raises:
        EmptySketchError: if no pixel is darker than `ink_threshold`.
    """
    box = ink_bbox(img, ink_threshold)
    if box is None:
        raise EmptySketchError(
            f"Empty sketch{_where(img)}: no ink pixel darker than {ink_threshold} in a {img.size[0]}x{img.size[1]} "
            "image, so there is nothing to crop to. Check the file, or the ink polarity (dark ink on white expected)."
        )
    left, upper, right, lower = box
    m = int(margin) if isinstance(margin, int) else int(round(margin * max(right - left, lower - upper)))
    cropped = img.crop(box)
    out = Image.new(img.mode, (right - left + 2 * m, lower - upper + 2 * m), _white(img.mode))
    out.paste(cropped, (m, m))
    return out


_WHITE = {"L": 255, "1": 1, "RGB": (255, 255, 255), "RGBA": (255, 255, 255, 255), "LA": (255, 255), "I": 255, "F": 255.0}


def _white(mode: str):
    """The white fill of a PIL mode."""
    return _WHITE.get(mode, 255)


def pad_to_square(img: Image.Image, fill=None) -> Image.Image:
    """Centre `img` on a square canvas of side `max(w, h)`, filled with white (or `fill`)."""
    w, h = img.size
    side = max(w, h)
    if w == h:
        return img
    out = Image.new(img.mode, (side, side), _white(img.mode) if fill is None else fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def thicken_strokes(img: Image.Image, width: int) -> Image.Image:
    """Grow black strokes by `width` pixels on each side (grey-level erosion of the white background).

    `MinFilter(2 * width + 1)` takes the darkest pixel of each neighbourhood, so on black-on-white
    images the ink spreads outwards. `width=0` returns the image unchanged.
    """
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    if width == 0:
        return img
    return img.filter(ImageFilter.MinFilter(2 * width + 1))


def scale_normalize(
    img: Image.Image,
    object_fraction: float = 0.85,
    canvas_size: Optional[int] = None,
    ink_threshold: int = 200,
    empty: str = "keep",
) -> Image.Image:
    """Crop a drawing to its ink box and rescale it so its longer side is `object_fraction` of a square white
    canvas (side `canvas_size`, default the input's longer side), centred; same mode as the input.

    The 3D-shape sketch-view paper finds that similarity depends strongly on the object's scale; applied to
    queries and gallery views alike, this removes the difference. An image without ink comes back as a blank
    canvas (`empty="keep"`) or raises `EmptySketchError` (`empty="raise"`).
    """
    side = canvas_size or max(img.size)
    canvas = Image.new(img.mode, (side, side), _white(img.mode))
    box = ink_bbox(img, ink_threshold)
    if box is None:
        if empty == "raise":
            raise EmptySketchError(
                f"Empty drawing{_where(img)}: no pixel darker than {ink_threshold} in a {img.size[0]}x{img.size[1]} image."
            )
        return canvas
    left, upper, right, lower = box
    width, height = right - left, lower - upper
    scale = object_fraction * side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # LANCZOS anti-aliases when shrinking and stays sharp when enlarging.
    obj = img.crop(box).resize(size, Image.Resampling.LANCZOS)
    canvas.paste(obj, ((side - size[0]) // 2, (side - size[1]) // 2))
    return canvas


def prepare_image(
    img: Image.Image,
    domain: str,
    *,
    sketch_ink_crop: bool = True,
    sketch_crop_margin: Union[int, float] = 0.05,
    sketch_stroke_width: int = 0,
    sketch_ink_threshold: int = 200,
    photo_pad_to_square: bool = False,
    empty_sketch: str = "raise",
    scale_object_fraction: Optional[float] = None,
    scale_ink_threshold: int = 200,
    normalize_views: bool = True,
) -> Image.Image:
    """The PIL steps of one image for its domain; returns RGB, before resize and normalisation.

    * `"sketch"`: `to_grayscale_ink`, then either `scale_normalize` (when `scale_object_fraction` is set) or
      `ink_bbox_crop` + `pad_to_square` (when `sketch_ink_crop`), then `thicken_strokes`.
    * `"photo"` / `"view"`: RGB; `scale_normalize` when `scale_object_fraction` is set and `normalize_views`
      (3D-shape views are drawings too; one without ink becomes a blank canvas whatever `empty_sketch` says),
      else `pad_to_square` when `photo_pad_to_square`.

    Raises:
        ValueError: unknown `domain`.
        EmptySketchError: a sketch without ink when `empty_sketch="raise"`.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    where = getattr(img, "filename", "")
    if domain != "sketch":
        img = img.convert("RGB")
        if scale_object_fraction is not None:
            if normalize_views:
                # `empty_sketch` is about queries; a gallery view without dark pixels stays (a blank canvas).
                img = scale_normalize(img, scale_object_fraction, ink_threshold=scale_ink_threshold, empty="keep")
            return img
        return pad_to_square(img) if photo_pad_to_square else img
    img = to_grayscale_ink(img)
    if scale_object_fraction is not None:
        img = scale_normalize(img, scale_object_fraction, ink_threshold=scale_ink_threshold, empty=empty_sketch)
    elif sketch_ink_crop:
        try:
            img = pad_to_square(ink_bbox_crop(img, sketch_crop_margin, sketch_ink_threshold))
        except EmptySketchError as err:
            if empty_sketch == "raise":
                raise EmptySketchError(f"{err}{f' [file: {where}]' if where else ''}") from None
    img = thicken_strokes(img, sketch_stroke_width)
    return img.convert("RGB")


__all__ = [
    "DOMAINS",
    "EmptySketchError",
    "ink_bbox",
    "ink_bbox_crop",
    "pad_to_square",
    "prepare_image",
    "scale_normalize",
    "thicken_strokes",
    "threshold",
    "to_8bit",
    "to_grayscale_ink",
]
