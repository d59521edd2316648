"""Scale normalisation for sketch views, and the image transform that applies it.

The paper finds that feature similarity between two sketch views depends strongly on the object's scale
in each, and that similar scales work best. `ScaleNormalize` removes the scale difference: it crops a
drawing to the bounding box of its ink and rescales it so the object's longer side fills a fixed
fraction of a square white canvas, centred. Applied identically to queries (freehand sketches) and
gallery (sketch views), a small and a large drawing of the same view become nearly the same image.

```python
>>> step = ScaleNormalize(object_fraction=0.85)
>>> normalised = step(Image.open("sketch.png"))            # PIL in, PIL out (same mode)
>>> transform = ShapeViewsImageTransform.for_model(model)   # ScaleNormalize + the encoder's processor
>>> pixel_values = transform(Image.open("sketch.png"), "sketch")   # FloatTensor (3, H, W)
```

`ShapeViewsImageTransform` is the package's `SbirImageTransform` with `ScaleNormalize` as a step for
both domains (the gallery here is sketch-like views, not photos); it saves/loads with the same
`sbir_image_transform.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence, Union

from PIL import Image

from hf_sbir.data.processing import IMAGENET_MEAN, IMAGENET_STD, SbirImageTransform
from hf_sbir.data.sketch_steps import scale_normalize


@dataclass
class ScaleNormalize:
    """Crop a drawing to its ink bounding box and rescale it so the object fills a fixed fraction of a canvas.

    Args:
        object_fraction (`float`, defaults to 0.85): the longer side of the ink box becomes this fraction of the
            canvas side (aspect ratio kept; the object is centred).
        canvas_size (`int`, *optional*): side of the square output; defaults to the input's longer side.
        ink_threshold (`int`, defaults to 200): grey level below which a pixel is ink (dark ink on light
            background expected; see `hf_sbir.data.processing.to_grayscale_ink`).
        empty (`str`, defaults to `"keep"`): an image without ink is returned on a blank canvas (`"keep"`) or
            raises `EmptySketchError` (`"raise"`).

    `step(image)` takes a PIL image (any mode) and returns a PIL image of the same mode, `canvas_size` square.
    """

    object_fraction: float = 0.85
    canvas_size: int | None = None
    ink_threshold: int = 200
    empty: str = "keep"

    def __post_init__(self):
        if not 0.0 < self.object_fraction <= 1.0:
            raise ValueError(f"object_fraction must be in (0, 1]; got {self.object_fraction!r}.")
        if self.canvas_size is not None and (not isinstance(self.canvas_size, int) or self.canvas_size < 1):
            raise ValueError(f"canvas_size must be a positive integer or None; got {self.canvas_size!r}.")
        if self.empty not in ("keep", "raise"):
            raise ValueError(f"empty must be 'keep' or 'raise'; got {self.empty!r}.")

    def __call__(self, image: Image.Image) -> Image.Image:
        return scale_normalize(image, self.object_fraction, self.canvas_size, self.ink_threshold, self.empty)

    def to_dict(self) -> dict:
        return asdict(self)


class ShapeViewsImageTransform(SbirImageTransform):
    """`SbirImageTransform` whose drawings go through `ScaleNormalize`: `(image, domain) -> FloatTensor (3, H, W)`.

    Sketches (`domain="sketch"`): `to_grayscale_ink` -> `ScaleNormalize` -> `thicken_strokes` -> RGB.
    Gallery views (`domain="photo"` or `"view"`): RGB -> `ScaleNormalize` (unless `normalize_views=False`).
    Then the image processor resizes and normalises.

    Args:
        scale_object_fraction (`float` or None): `ScaleNormalize.object_fraction`; None disables the step
            (then the parent's `sketch_ink_crop` applies, off by default here).
        scale_ink_threshold (`int`): `ScaleNormalize.ink_threshold`.
        normalize_views (`bool`): apply scale normalisation to gallery views too (default; the paper's finding is
            that query and gallery should share the object scale).
        Other arguments: as `SbirImageTransform`.
    """

    domains = ("sketch", "photo", "view")

    def __init__(
        self,
        image_processor=None,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scale_object_fraction: float | None = 0.85,
        scale_ink_threshold: int = 200,
        normalize_views: bool = True,
        sketch_ink_crop: bool = False,
        sketch_crop_margin: Union[int, float] = 0.05,
        sketch_stroke_width: int = 0,
        sketch_ink_threshold: int = 200,
        photo_pad_to_square: bool = False,
        empty_sketch: str = "keep",
    ):
        super().__init__(
            image_processor=image_processor,
            image_size=image_size,
            mean=mean,
            std=std,
            sketch_ink_crop=sketch_ink_crop,
            sketch_crop_margin=sketch_crop_margin,
            sketch_stroke_width=sketch_stroke_width,
            sketch_ink_threshold=sketch_ink_threshold,
            photo_pad_to_square=photo_pad_to_square,
            empty_sketch=empty_sketch,
        )
        self.scale_object_fraction = scale_object_fraction
        self.scale_ink_threshold = scale_ink_threshold
        self.normalize_views = normalize_views
        self.scale_normalize = (
            None
            if scale_object_fraction is None
            else ScaleNormalize(object_fraction=scale_object_fraction, ink_threshold=scale_ink_threshold, empty=empty_sketch)
        )

    @classmethod
    def for_model(cls, model_or_config, image_size: int | None = None, **kwargs) -> "ShapeViewsImageTransform":
        """The transform for a `ShapeViewsModel` (or its config): the encoder's resize/normalisation (ImageNet
        statistics for ViT/DINO/ResNet, CLIP's for CLIP, the packaged net's own for the hybrid) and the config's
        `scale_object_fraction`."""
        from hf_sbir.backbones.processing import image_processor_for_backbone

        config = getattr(model_or_config, "config", model_or_config)
        backbone_config = config.backbone_config
        if backbone_config.model_type == "resnet":
            # ResNets take ImageNet statistics, like a ViT: reuse the shared processor settings.
            processor = image_processor_for_backbone({"model_type": "vit"}, image_size=image_size or 224)
        else:
            processor = image_processor_for_backbone(backbone_config, image_size=image_size)
        kwargs.setdefault("scale_object_fraction", config.scale_object_fraction)
        return cls(image_processor=processor, image_size=int(processor.size["height"]), **kwargs)

    def prepare_settings(self) -> dict:
        return dict(
            super().prepare_settings(),
            scale_object_fraction=self.scale_object_fraction,
            scale_ink_threshold=self.scale_ink_threshold,
            normalize_views=self.normalize_views,
        )

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(
            scale_object_fraction=self.scale_object_fraction,
            scale_ink_threshold=self.scale_ink_threshold,
            normalize_views=self.normalize_views,
        )
        return out


__all__ = ["ScaleNormalize", "ShapeViewsImageTransform"]
