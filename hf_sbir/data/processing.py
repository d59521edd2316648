"""Sketch clean-up steps and the image transform shared by sketches and photos.

The sketch steps are small pure functions on PIL images (their home is `hf_sbir.data.sketch_steps`,
re-exported here); each expects (or produces) black ink on a white background, mode `"L"`:

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

import torch
from PIL import Image

from hf_sbir.data.core import CorruptImageError
from hf_sbir.data.sketch_steps import (  # noqa: F401  (re-exported: the steps' public home is this module too)
    EmptySketchError,
    _where,
    ink_bbox,
    ink_bbox_crop,
    pad_to_square,
    prepare_image,
    thicken_strokes,
    threshold,
    to_8bit,
    to_grayscale_ink,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRANSFORM_CONFIG_NAME = "sbir_image_transform.json"
# transform_type -> the module defining it (imported on demand by `SbirImageTransform.from_dict`).
_KNOWN_SUBCLASSES = {"ShapeViewsImageTransform": "hf_sbir.models.shape_views.processing_shape_views"}


def _default_image_processor(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """A ViT image processor (PIL backend) that resizes to `image_size` squared and normalises with `mean`/`std`."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )


def _image_processor_from_dict(config: dict):
    """Rebuild an image processor from its `to_dict()`, using the class named in `image_processor_type`.

    The PIL backend (`<Name>Pil`) is preferred even when torchvision is installed: a model's preprocessing
    must give the same numbers whether or not an optional package happens to be present (and the same
    numbers as the folder's `SbirImageProcessor`, which is PIL-based).
    """
    import transformers

    name = config.get("image_processor_type") or "ViTImageProcessor"
    for suffix in ("Fast", "Pil"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    cls = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"Unknown image processor class {name!r} in the saved transform")
    kwargs = {k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class")}
    return cls(**kwargs)


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

    Subclasses (e.g. the shape-views transform) are recorded by name in the saved json, so
    `SbirImageTransform.from_pretrained(folder)` returns the class that saved the folder.
    """

    domains = ("sketch", "photo")
    _subclasses: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        SbirImageTransform._subclasses[cls.__name__] = cls

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

    def prepare_settings(self) -> dict:
        """The keyword arguments of `sketch_steps.prepare_image` that this transform applies."""
        return dict(
            sketch_ink_crop=self.sketch_ink_crop,
            sketch_crop_margin=self.sketch_crop_margin,
            sketch_stroke_width=self.sketch_stroke_width,
            sketch_ink_threshold=self.sketch_ink_threshold,
            photo_pad_to_square=self.photo_pad_to_square,
            empty_sketch=self.empty_sketch,
        )

    def prepare(self, image, domain: str) -> Image.Image:
        """Apply the domain's PIL steps and return an RGB image (before resize/normalise)."""
        if domain not in self.domains:
            raise ValueError(f"domain must be one of {self.domains}, got {domain!r}")
        img = load_image(image)
        try:
            return prepare_image(img, domain, **self.prepare_settings())
        except EmptySketchError as err:
            where = image.get("path") if isinstance(image, dict) else ""
            if where and "[file:" not in str(err):
                raise EmptySketchError(f"{err} [file: {where}]") from None
            raise

    def to_image_processor(self):
        """The same preprocessing as a transformers image processor (`SbirImageProcessor`), to save next to a
        model so that `AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)` reproduces this
        transform without hf-sbir installed."""
        from hf_sbir.image_processing_sbir import SbirImageProcessor

        return SbirImageProcessor.from_transform(self)

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
            "transform_type": type(self).__name__,
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
        # A folder saved by a subclass (e.g. ShapeViewsImageTransform) needs that class for its settings.
        saved_type = config.pop("transform_type", None)
        if saved_type is None and "normalize_views" in config:
            # Folders saved before `transform_type` existed: only the shape-views transform writes this key.
            saved_type = "ShapeViewsImageTransform"
        if saved_type in _KNOWN_SUBCLASSES and saved_type not in SbirImageTransform._subclasses:
            # Subclasses live with their model family, loaded on first use; import the one the folder names.
            import importlib

            importlib.import_module(_KNOWN_SUBCLASSES[saved_type])
        if saved_type and saved_type != cls.__name__ and saved_type in SbirImageTransform._subclasses:
            cls = SbirImageTransform._subclasses[saved_type]
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
