"""Sketch clean-up steps and the image transform shared by sketches and photos.

The sketch steps are small pure functions on PIL images; each expects (or produces) black ink on a
white background, mode `"L"`:

    to_grayscale_ink -> ink_bbox_crop -> pad_to_square -> thicken_strokes

`SbirImageTransform` runs them for `domain == "sketch"`, converts to RGB, and then hands resizing and
normalisation to a transformers image processor (by default a `ViTImageProcessor` configured with
`image_size`, `mean`, `std`), so the numbers match what the backbone was trained with.

```python
>>> transform = SbirImageTransform(image_size=224)
>>> pixel_values = transform(Image.open("sketch.png"), "sketch")   # FloatTensor (3, 224, 224)
>>> transform.save_pretrained("my-model")                          # writes sbir_image_transform.json
>>> SbirImageTransform.from_pretrained("my-model")
```
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from hf_sbir.data.core import CorruptImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRANSFORM_CONFIG_NAME = "sbir_image_transform.json"


class EmptySketchError(ValueError):
    """A sketch with no ink pixels: nothing to crop, and nothing a model could match."""


def _where(img: Image.Image) -> str:
    # PIL keeps the source path on images opened from a file; it is lost after convert().
    filename = getattr(img, "filename", "")
    return f" ({filename})" if filename else ""


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


def _white(mode: str):
    return {"L": 255, "1": 1, "RGB": (255, 255, 255), "RGBA": (255, 255, 255, 255), "LA": (255, 255)}.get(mode, 255)


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


def _default_image_processor(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """A ViT image processor that resizes to `image_size` squared and normalises with `mean`/`std`."""
    import transformers
    from transformers.utils import is_torchvision_available

    # Without torchvision, transformers 5 falls back to the PIL backend with a warning; ask for it directly.
    cls = getattr(transformers, "ViTImageProcessorPil", None) if not is_torchvision_available() else None
    cls = cls or transformers.ViTImageProcessor
    return cls(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )


def _image_processor_from_dict(config: dict):
    """Rebuild an image processor from its `to_dict()`, using the class named in `image_processor_type`."""
    import transformers
    from transformers.utils import is_torchvision_available

    name = config.get("image_processor_type") or "ViTImageProcessor"
    for suffix in ("Fast", "Pil"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    # Look up the PIL backend first: touching the default class name without torchvision warns.
    cls = None
    if not is_torchvision_available():
        cls = getattr(transformers, f"{name}Pil", None)
    cls = cls or getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"Unknown image processor class {name!r} in the saved transform")
    kwargs = {k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class")}
    return cls(**kwargs)


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


def load_image(image: Union[str, os.PathLike, Image.Image, dict]) -> Image.Image:
    """Open `image` (a path, a PIL image, or a `datasets` `{"path", "bytes"}` dict) and load its pixels.

    High-bit-depth greyscale comes back as 8-bit `"L"` (`to_8bit`), so later `convert` calls see the
    right brightness.

    Raises:
        CorruptImageError: naming the path when the file cannot be read.
    """
    import io

    if isinstance(image, dict):
        path = image.get("path")
        source = io.BytesIO(image["bytes"]) if image.get("bytes") is not None else path
    elif isinstance(image, Image.Image):
        path, source = getattr(image, "filename", "") or "<in-memory image>", None
    else:
        path = source = os.fspath(image)
    try:
        img = Image.open(source) if source is not None else image
        img.load()
    except Exception as err:  # PIL raises several types on truncated/garbage files
        raise CorruptImageError(path, f"{type(err).__name__}: {err}") from err
    return to_8bit(img)


class SbirImageTransform:
    """Turn a sketch or a photo into model input: `(image, domain) -> FloatTensor (3, H, W)`.

    Sketches go through `to_grayscale_ink`, optionally `ink_bbox_crop` + `pad_to_square`, optionally
    `thicken_strokes`, then to RGB. Photos are only converted to RGB (and padded to a square if
    `photo_pad_to_square`). Resize, rescale and normalisation are the image processor's job.

    Args:
        image_processor: any transformers image processor instance (e.g. from
            `AutoImageProcessor.from_pretrained(backbone)`); when given, `image_size`/`mean`/`std`
            are ignored and the processor's own settings apply. `None` builds a `ViTImageProcessor`.
        image_size: output side, for the default processor.
        mean, std: normalisation of the default processor (ImageNet statistics by default).
        sketch_ink_crop: crop sketches to their ink and pad them square (scale normalisation:
            Sketchy/TU-Berlin/QuickDraw sketches differ a lot in how much of the canvas they use).
        sketch_crop_margin: `margin` of `ink_bbox_crop`.
        sketch_stroke_width: extra pixels of stroke on each side (`thicken_strokes`); 0 keeps strokes.
        sketch_ink_threshold: grey level below which a pixel counts as ink for the crop.
        photo_pad_to_square: pad photos to a square (white) before resizing, keeping aspect ratio.
        empty_sketch: `"raise"` (default) raises `EmptySketchError`; `"keep"` passes the blank
            sketch through uncropped (training uses it so that one blank sketch in the data does not stop
            a run; `for_inference()` gives the copy a saved model carries, which refuses blank queries).
    """

    def __init__(
        self,
        image_processor=None,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        sketch_ink_crop: bool = True,
        sketch_crop_margin: Union[int, float] = 0.05,
        sketch_stroke_width: int = 0,
        sketch_ink_threshold: int = 200,
        photo_pad_to_square: bool = False,
        empty_sketch: str = "raise",
    ):
        if empty_sketch not in ("raise", "keep"):
            raise ValueError(f"empty_sketch must be 'raise' or 'keep', got {empty_sketch!r}")
        self.image_size = image_size
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)
        self.image_processor = (
            image_processor
            if image_processor is not None
            else _default_image_processor(image_size, self.mean, self.std)
        )
        self.sketch_ink_crop = sketch_ink_crop
        self.sketch_crop_margin = sketch_crop_margin
        self.sketch_stroke_width = sketch_stroke_width
        self.sketch_ink_threshold = sketch_ink_threshold
        self.photo_pad_to_square = photo_pad_to_square
        self.empty_sketch = empty_sketch

    def for_inference(self) -> "SbirImageTransform":
        """A copy with `empty_sketch="raise"`: what a trained model saves, so that a blank query is refused
        (`EmptySketchError`) as by the default transform, not silently scored."""
        return type(self).from_dict({**self.to_dict(), "empty_sketch": "raise"})

    def prepare(self, image, domain: str) -> Image.Image:
        """Apply the domain's PIL steps and return an RGB image (before resize/normalise)."""
        if domain not in ("sketch", "photo"):
            raise ValueError(f"domain must be 'sketch' or 'photo', got {domain!r}")
        img = load_image(image)
        where = getattr(img, "filename", "") or (image.get("path") if isinstance(image, dict) else "")
        if domain == "photo":
            img = img.convert("RGB")
            return pad_to_square(img) if self.photo_pad_to_square else img
        img = to_grayscale_ink(img)
        if self.sketch_ink_crop:
            try:
                img = pad_to_square(ink_bbox_crop(img, self.sketch_crop_margin, self.sketch_ink_threshold))
            except EmptySketchError as err:
                if self.empty_sketch == "raise":
                    raise EmptySketchError(f"{err}{f' [file: {where}]' if where else ''}") from None
        img = thicken_strokes(img, self.sketch_stroke_width)
        return img.convert("RGB")

    def __call__(self, image, domain: str) -> torch.FloatTensor:
        """Args: `image` (PIL image, path, or `datasets` image dict), `domain` (`"sketch"`/`"photo"`).

        Returns:
            `torch.FloatTensor` of shape `(3, H, W)`.
        """
        return self.batch([image], [domain])[0]

    def batch(self, images: Sequence[Any], domains: Sequence[str]) -> torch.FloatTensor:
        """Transform several images at once: returns `(B, 3, H, W)`."""
        if len(images) != len(domains):
            raise ValueError(f"{len(images)} images but {len(domains)} domains")
        prepared = [self.prepare(img, dom) for img, dom in zip(images, domains)]
        pixel_values = self.image_processor(images=prepared, return_tensors="pt")["pixel_values"]
        return pixel_values.float()

    def dataset_transform(self, examples: dict) -> dict:
        """For `Dataset.set_transform`: adds `pixel_values` (list of `(3, H, W)` tensors) to a batch of rows."""
        pixel_values = self.batch(examples["image"], examples["domain"])
        out = dict(examples)
        out["pixel_values"] = list(pixel_values)
        return out

    # --- serialisation, so a trained model folder can carry its preprocessing ---------------------

    def to_dict(self) -> dict:
        """JSON-serialisable settings, including the image processor's own `to_dict()`."""
        processor = json.loads(self.image_processor.to_json_string())
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "sketch_ink_crop": self.sketch_ink_crop,
            "sketch_crop_margin": self.sketch_crop_margin,
            "sketch_stroke_width": self.sketch_stroke_width,
            "sketch_ink_threshold": self.sketch_ink_threshold,
            "photo_pad_to_square": self.photo_pad_to_square,
            "empty_sketch": self.empty_sketch,
            "image_processor": processor,
        }

    @classmethod
    def from_dict(cls, config: dict) -> "SbirImageTransform":
        config = dict(config)
        processor = config.pop("image_processor", None)
        return cls(image_processor=_image_processor_from_dict(processor) if processor else None, **config)

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> str:
        """Write `sbir_image_transform.json` into `save_directory`; returns the file path."""
        path = Path(save_directory) / TRANSFORM_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return str(path)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike]) -> "SbirImageTransform":
        """Read `sbir_image_transform.json` from a folder (or the json file itself)."""
        path = Path(directory)
        if path.is_dir():
            path = path / TRANSFORM_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"No {TRANSFORM_CONFIG_NAME} at {path}")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def __repr__(self) -> str:
        settings = {k: v for k, v in self.to_dict().items() if k != "image_processor"}
        return f"{type(self).__name__}({settings}, image_processor={type(self.image_processor).__name__})"
