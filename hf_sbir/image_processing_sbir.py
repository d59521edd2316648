"""`SbirImageProcessor`: hf-sbir's sketch/photo preprocessing as a transformers image processor.

Every model folder that `train.py` exports carries this processor (`preprocessor_config.json`) and its code
(`image_processing_sbir.py` + `sketch_steps.py`), so on a machine *without* hf-sbir:

```python
>>> from transformers import AutoImageProcessor
>>> processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
>>> processor(sketch, domain="sketch", return_tensors="pt").pixel_values       # (1, 3, H, W)
>>> processor(photos, domain="photo", return_tensors="pt").pixel_values       # (B, 3, H, W)
>>> processor([sketch, photo], domain=["sketch", "photo"], return_tensors="pt")  # one domain per image
```

gives exactly the pixels `hf_sbir.data.SbirImageTransform` gives in training and evaluation: the domain's PIL
steps (`hf_sbir.data.sketch_steps.prepare_image`: ink crop, pad to square, stroke thickening for
sketches; scale normalisation for 3D-shape views), then resize, rescale and normalise with transformers'
PIL backend. One class serves the four families; each family's settings are in its saved config (e.g.
`scale_object_fraction` and `normalize_views` for shape views, `sketch_ink_crop` for the others).

`domain` is `"sketch"`, `"photo"` (default) or `"view"` (a 3D-shape view; like `"photo"`).

The PIL backend is used whether or not torchvision is installed: the numbers a model was trained with must
not depend on an optional package. This file imports hf-sbir modules only in the one-line form that
`hf_sbir.modeling_utils.bundle_files` rewrites into same-folder imports (see `save_pretrained`).
"""

from __future__ import annotations

import importlib
import os
from typing import Optional, Union

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs

from hf_sbir.data.sketch_steps import DOMAINS, prepare_image, to_8bit

# The keyword arguments of `prepare_image`, in the order they are documented there.
STEP_SETTINGS = (
    "sketch_ink_crop",
    "sketch_crop_margin",
    "sketch_stroke_width",
    "sketch_ink_threshold",
    "photo_pad_to_square",
    "empty_sketch",
    "scale_object_fraction",
    "scale_ink_threshold",
    "normalize_views",
)


class SbirImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments `SbirImageProcessor` accepts on top of transformers' `ImagesKwargs`.

    domain (`str` or `list[str]`): `"sketch"`, `"photo"` or `"view"`, for all images or one per image.
    The other keys are the settings of `sketch_steps.prepare_image` (documented there).
    """

    domain: Union[str, list[str]]
    sketch_ink_crop: bool
    sketch_crop_margin: Union[int, float]
    sketch_stroke_width: int
    sketch_ink_threshold: int
    photo_pad_to_square: bool
    empty_sketch: str
    scale_object_fraction: Optional[float]
    scale_ink_threshold: int
    normalize_views: bool


class SbirImageProcessor(PilBackend):
    """Sketch-aware image processor: `processor(images, domain="sketch"|"photo"|"view") -> pixel_values`.

    Class defaults are those of `SbirImageTransform` with the ImageNet statistics at 224 px; exported folders
    store their model's own values (size, mean/std, sketch steps).
    """

    valid_kwargs = SbirImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = list(IMAGENET_DEFAULT_MEAN)
    image_std = list(IMAGENET_DEFAULT_STD)
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    domain = "photo"
    sketch_ink_crop = True
    sketch_crop_margin = 0.05
    sketch_stroke_width = 0
    sketch_ink_threshold = 200
    photo_pad_to_square = False
    empty_sketch = "raise"
    scale_object_fraction = None
    scale_ink_threshold = 200
    normalize_views = True

    def _preprocess_image_like_inputs(self, images, *args, **kwargs):
        domain = kwargs.pop("domain", None) or self.domain
        steps = {name: kwargs.pop(name) for name in STEP_SETTINGS}
        images = self._prepare_images_structure(images)
        domains = [domain] * len(images) if isinstance(domain, str) else list(domain)
        if len(domains) != len(images):
            raise ValueError(f"{len(images)} images but {len(domains)} domains; pass one domain, or one per image.")
        for d in set(domains):
            if d not in DOMAINS:
                raise ValueError(f"domain must be one of {DOMAINS}, got {d!r}")
        prepared = [prepare_image(_to_pil(img), d, **steps) for img, d in zip(images, domains)]
        return super()._preprocess_image_like_inputs(prepared, *args, **kwargs)

    @classmethod
    def from_transform(cls, transform) -> "SbirImageProcessor":
        """The processor equivalent to an `SbirImageTransform` (or subclass): its PIL steps and its image
        processor's resize/rescale/normalise settings."""
        ip = transform.image_processor
        size = dict(ip.size) if ip.size is not None else {"height": transform.image_size, "width": transform.image_size}
        return cls(
            size={k: v for k, v in size.items() if v is not None},
            resample=ip.resample,
            do_resize=ip.do_resize,
            do_rescale=ip.do_rescale,
            rescale_factor=ip.rescale_factor,
            do_normalize=ip.do_normalize,
            image_mean=list(ip.image_mean),
            image_std=list(ip.image_std),
            do_convert_rgb=True,
            do_center_crop=bool(getattr(ip, "do_center_crop", False)),
            crop_size=dict(ip.crop_size) if getattr(ip, "crop_size", None) is not None else None,
            **transform.prepare_settings(),
        )

    def to_dict(self) -> dict:
        out = super().to_dict()
        # transformers drops None settings whose class default is None; say "off" explicitly in the json.
        out["scale_object_fraction"] = self.scale_object_fraction
        return out

    def save_pretrained(self, save_directory: Union[str, os.PathLike], *args, **kwargs):
        """Save the config and, next to it, a self-contained copy of this file and `sketch_steps.py`."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        try:
            # importlib, not an import statement: the remote-code copy must not require hf-sbir.
            bundle_files = importlib.import_module("hf_sbir.modeling_utils").bundle_files
        except ImportError:
            return out  # running from a saved copy: transformers copied the already self-contained files
        for name, source in bundle_files(__file__).items():
            with open(os.path.join(save_directory, name), "w", encoding="utf-8") as f:
                f.write(source)
        return out


def _to_pil(image) -> Image.Image:
    """PIL images pass through (16/32-bit greyscale scaled to 8-bit, as hf-sbir's loader does); numpy arrays /
    torch tensors (HWC or CHW, uint8 or floats in [0, 1]) become PIL."""
    if isinstance(image, Image.Image):
        return to_8bit(image)
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        array = np.clip(array * 255.0 if array.max() <= 1.0 else array, 0, 255).round().astype(np.uint8)
    return Image.fromarray(array)


SbirImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["SbirImageProcessor", "SbirImageProcessorKwargs"]
