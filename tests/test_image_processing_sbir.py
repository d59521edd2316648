"""`SbirImageProcessor` (hf_sbir/image_processing_sbir.py): the exported image processor gives exactly the
pixels of hf-sbir's own transform, for sketches and photos/views of every family's settings, and loads back
through `AutoImageProcessor` (the no-hf-sbir route is tested on real exported folders in
tests/test_model_card_usage.py)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoImageProcessor

import hf_sbir  # noqa: F401  (registers the processor with AutoImageProcessor)
from hf_sbir.backbones.processing import image_processor_for_backbone
from hf_sbir.data import SbirImageTransform
from hf_sbir.data.processing import EmptySketchError
from hf_sbir.image_processing_sbir import SbirImageProcessor
from hf_sbir.models.shape_views import ShapeViewsImageTransform


def _images():
    """A thin-stroke sketch off-centre, a transparent-background one, light-on-dark ink, a photo, a numpy sketch."""
    thin = Image.new("L", (150, 110), 255)
    ImageDraw.Draw(thin).polygon([(20, 15), (70, 30), (40, 90)], outline=0)
    transparent = Image.new("RGBA", (90, 90), (0, 0, 0, 0))
    ImageDraw.Draw(transparent).ellipse((10, 30, 60, 80), outline=(0, 0, 0, 255), width=2)
    dark = Image.new("L", (80, 120), 0)
    ImageDraw.Draw(dark).line((5, 5, 70, 100), fill=255, width=3)
    photo = Image.new("RGB", (120, 70), (200, 180, 160))
    ImageDraw.Draw(photo).rectangle((30, 10, 90, 60), fill=(20, 90, 200))
    array = np.full((64, 64, 3), 255, np.uint8)
    array[20:44, 30:33] = 0
    return [thin, transparent, dark, photo, array]


TRANSFORMS = {
    "default": lambda: SbirImageTransform(image_size=48),
    "strokes, pixel margin, padded photos": lambda: SbirImageTransform(
        image_size=40, sketch_stroke_width=2, sketch_crop_margin=3, photo_pad_to_square=True
    ),
    "packaged-backbone normalisation": lambda: SbirImageTransform(
        image_processor=image_processor_for_backbone({"model_type": "sbir_hybrid_efficientnet"}, image_size=56)
    ),
    "no ink crop": lambda: SbirImageTransform(image_size=32, sketch_ink_crop=False),
    "shape views": lambda: ShapeViewsImageTransform(image_size=48, scale_object_fraction=0.7, sketch_stroke_width=1),
    "shape views, raw views": lambda: ShapeViewsImageTransform(image_size=48, normalize_views=False),
    "shape views, scale step off": lambda: ShapeViewsImageTransform(image_size=48, scale_object_fraction=None),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_processor_reproduces_the_transform_exactly(name, tmp_path):
    transform = TRANSFORMS[name]()
    images = _images()
    domains = ["sketch", "sketch", "sketch", "photo", "sketch"]
    if isinstance(transform, ShapeViewsImageTransform):
        domains[3] = "view"
    expected = torch.stack([transform(img if not isinstance(img, np.ndarray) else Image.fromarray(img), d)
                            for img, d in zip(images, domains)])
    processor = transform.to_image_processor()
    got = processor(images, domain=domains, return_tensors="pt").pixel_values
    assert torch.equal(got, expected), (got - expected).abs().max()

    # Saved and loaded back, through the Auto class, like a user of the folder.
    processor.save_pretrained(tmp_path)
    assert {"preprocessor_config.json", "image_processing_sbir.py", "sketch_steps.py"} <= {p.name for p in tmp_path.iterdir()}
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, SbirImageProcessor)
    assert torch.equal(loaded(images, domain=domains, return_tensors="pt").pixel_values, expected)
    # One domain for a whole batch.
    sketches = [images[0], images[2]]
    assert torch.equal(
        loaded(sketches, domain="sketch", return_tensors="pt").pixel_values, expected[[0, 2]]
    )


def test_sketch_steps_matter_and_photos_are_untouched():
    """`domain` changes the pixels of a sketch (crop, thickening), not of a photo: the reason a plain
    ViT processor reproduced photo embeddings but not sketch ones."""
    processor = SbirImageTransform(image_size=48, sketch_stroke_width=2).to_image_processor()
    sketch = _images()[0]
    as_sketch = processor(sketch, domain="sketch", return_tensors="pt").pixel_values
    as_photo = processor(sketch, domain="photo", return_tensors="pt").pixel_values
    assert (as_sketch - as_photo).abs().max() > 0.5
    assert torch.equal(as_photo, processor(sketch, return_tensors="pt").pixel_values)  # "photo" is the default


def test_bad_domains_and_empty_sketches_give_clear_errors():
    processor = SbirImageTransform(image_size=32).to_image_processor()
    with pytest.raises(ValueError, match="domain must be one of"):
        processor(_images()[0], domain="drawing")
    with pytest.raises(ValueError, match="2 images but 1 domains"):
        processor(_images()[:2], domain=["sketch"])
    blank = Image.new("L", (40, 40), 255)
    with pytest.raises(EmptySketchError, match="Empty sketch"):
        processor(blank, domain="sketch")
    keep = SbirImageTransform(image_size=32, empty_sketch="keep").to_image_processor()
    assert keep(blank, domain="sketch", return_tensors="pt").pixel_values.shape == (1, 3, 32, 32)


def test_transform_from_pretrained_returns_the_class_that_saved_it(tmp_path):
    """README's `SbirImageTransform.from_pretrained(folder)` works on a shape-views folder too."""
    ShapeViewsImageTransform(image_size=40, scale_object_fraction=0.6).save_pretrained(tmp_path)
    loaded = SbirImageTransform.from_pretrained(tmp_path)
    assert isinstance(loaded, ShapeViewsImageTransform) and loaded.scale_object_fraction == 0.6


def test_saved_shape_views_processor_refuses_blank_queries_but_keeps_blank_views():
    """An exported model refuses a blank sketch; a gallery view without dark ink (a light rendering) is not a
    query and must not stop a gallery from being indexed."""
    transform = ShapeViewsImageTransform(image_size=32, empty_sketch="keep").for_inference()
    processor = transform.to_image_processor()
    light_view = Image.new("RGB", (60, 40), "white")
    ImageDraw.Draw(light_view).ellipse((10, 5, 50, 35), outline="gold", width=3)  # grey level ~202: no ink
    expected = transform(light_view, "view")
    assert torch.equal(processor(light_view, domain="view", return_tensors="pt").pixel_values[0], expected)
    with pytest.raises(EmptySketchError):
        processor(Image.new("L", (40, 40), 255), domain="sketch")
