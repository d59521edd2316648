"""Sketch processing steps, SbirImageTransform, and stroke rasterisation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hf_sbir.data import (
    CorruptImageError,
    EmptySketchError,
    SbirImageTransform,
    ink_bbox,
    ink_bbox_crop,
    load_quickdraw_ndjson,
    load_quickdraw_npz,
    pad_to_square,
    rasterize_strokes,
    thicken_strokes,
    threshold,
    to_grayscale_ink,
)


def _box_sketch(mode="L") -> Image.Image:
    """100x60 white image with a black rectangle outline from (10, 20) to (30, 50) inclusive."""
    img = Image.new(mode, (100, 60), "white")
    ImageDraw.Draw(img).rectangle([10, 20, 30, 50], outline="black")
    return img


def _ink(img) -> int:
    return int((np.asarray(img.convert("L")) < 128).sum())


def test_ink_bbox_and_crop_known_box():
    img = _box_sketch()
    assert ink_bbox(img) == (10, 20, 31, 51)
    cropped = ink_bbox_crop(img, margin=0)
    assert cropped.size == (21, 31)
    a = np.asarray(cropped)
    assert a[0, 0] == 0 and a[-1, -1] == 0  # corners of the outline are the crop corners
    padded = ink_bbox_crop(img, margin=5)
    assert padded.size == (31, 41) and ink_bbox(padded) == (5, 5, 26, 36)
    frac = ink_bbox_crop(img, margin=0.1)  # 10% of the longer side (31) -> 3 px
    assert frac.size == (27, 37)
    rgb = ink_bbox_crop(_box_sketch("RGB"), margin=2)
    assert rgb.mode == "RGB" and rgb.size == (25, 35)


def test_empty_sketch_raises_clear_error():
    with pytest.raises(EmptySketchError, match="no ink") as info:
        ink_bbox_crop(Image.new("L", (32, 32), 255))
    assert isinstance(info.value, ValueError)


def test_to_grayscale_ink_inverts_light_on_dark():
    dark = Image.new("RGB", (40, 40), "black")
    ImageDraw.Draw(dark).line([(5, 20), (35, 20)], fill="white", width=3)
    out = to_grayscale_ink(dark)
    assert out.mode == "L"
    a = np.asarray(out)
    assert a[0, 0] == 255 and a[20, 20] == 0
    # Already black on white: unchanged polarity.
    assert np.asarray(to_grayscale_ink(_box_sketch("RGB")))[0, 0] == 255
    # Transparent background composited on white.
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(2, 10), (18, 10)], fill=(0, 0, 0, 255), width=2)
    b = np.asarray(to_grayscale_ink(rgba))
    assert b[0, 0] == 255 and b[10, 10] == 0


def test_threshold_pad_and_thicken():
    grey = Image.fromarray(np.array([[10, 127, 128, 250]], dtype=np.uint8), mode="L")
    assert np.asarray(threshold(grey)).tolist() == [[0, 0, 255, 255]]
    sq = pad_to_square(_box_sketch())
    assert sq.size == (100, 100) and ink_bbox(sq) == (10, 40, 31, 71)
    img = _box_sketch()
    thick = thicken_strokes(img, 2)
    assert _ink(thick) > _ink(img)
    assert thicken_strokes(img, 0) is img
    assert ink_bbox(thick) == (8, 18, 33, 53)  # grew by 2 px on each side


def test_transform_shapes_and_processor():
    t = SbirImageTransform(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = t(_box_sketch(), "sketch")
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert x.max() <= 1.0 + 1e-6 and x.min() >= -1.0 - 1e-6  # normalised by the image processor
    # Cropped to its ink and padded square, the box outline spans (almost) the whole output height,
    # whereas without the crop it covers about half of it.
    rows = torch.nonzero((x[0] < 0.9).any(dim=1)).flatten()
    assert rows.max() - rows.min() >= 26
    uncropped = SbirImageTransform(image_size=32, sketch_ink_crop=False)(_box_sketch(), "sketch")
    rows = torch.nonzero((uncropped[0] < uncropped[0].max() - 0.1).any(dim=1)).flatten()
    assert rows.max() - rows.min() < 20
    photo = Image.new("RGB", (50, 30), (255, 0, 0))
    y = t(photo, "photo")
    assert y.shape == (3, 32, 32) and torch.allclose(y[0], torch.ones(32, 32), atol=1e-5)
    batch = t.batch([_box_sketch(), photo], ["sketch", "photo"])
    assert batch.shape == (2, 3, 32, 32) and torch.allclose(batch[1], y)
    with pytest.raises(ValueError, match="domain"):
        t(photo, "painting")


def test_transform_accepts_any_image_processor():
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40})
    t = SbirImageTransform(image_processor=proc, sketch_stroke_width=1)
    assert t(_box_sketch(), "sketch").shape == (3, 40, 40)
    restored = SbirImageTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    assert restored(_box_sketch(), "sketch").shape == (3, 40, 40)


def test_transform_save_and_load(tmp_path):
    t = SbirImageTransform(image_size=48, sketch_stroke_width=2, sketch_crop_margin=4, photo_pad_to_square=True)
    path = t.save_pretrained(tmp_path / "model")
    assert path.endswith("sbir_image_transform.json")
    restored = SbirImageTransform.from_pretrained(tmp_path / "model")
    assert restored.to_dict() == t.to_dict()
    img = _box_sketch()
    assert torch.equal(restored(img, "sketch"), t(img, "sketch"))


def test_transform_errors_name_the_path(tmp_path):
    t = SbirImageTransform(image_size=16)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(CorruptImageError, match="broken.png"):
        t(bad, "photo")
    blank = tmp_path / "blank.png"
    Image.new("L", (20, 20), 255).save(blank)
    with pytest.raises(EmptySketchError, match="blank.png"):
        t(blank, "sketch")
    with pytest.raises(EmptySketchError, match="blank.png"):
        t(Image.open(blank), "sketch")
    keep = SbirImageTransform(image_size=16, empty_sketch="keep")
    assert keep(blank, "sketch").shape == (3, 16, 16)


def test_dataset_transform_adds_pixel_values(tmp_path):
    t = SbirImageTransform(image_size=16)
    out = t.dataset_transform({"image": [_box_sketch(), Image.new("RGB", (9, 9))], "domain": ["sketch", "photo"]})
    assert len(out["pixel_values"]) == 2 and out["pixel_values"][0].shape == (3, 16, 16)


# --- strokes ---------------------------------------------------------------------------------


def test_rasterize_quickdraw_drawing():
    drawing = [[[0, 255], [0, 255]], [[0, 255], [255, 0]]]  # an X
    img = rasterize_strokes(drawing, size=64, line_width=2, padding=4)
    assert img.size == (64, 64) and img.mode == "L"
    box = ink_bbox(img, 128)
    assert box[0] <= 5 and box[2] >= 59  # the drawing fills the canvas minus the padding
    a = np.asarray(img)
    assert a[32, 32] < 128 and a[32, 5] > 200  # crossing inked, side empty
    with pytest.raises(EmptySketchError):
        rasterize_strokes([])


def test_rasterize_stroke3_matches_absolute():
    # A square drawn as one stroke, then a separate diagonal stroke, in stroke-3 offsets.
    stroke3 = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [-10, 0, 0], [0, -10, 1], [0, 0, 0], [10, 10, 1]])
    absolute = [[[0, 10, 10, 0, 0], [0, 0, 10, 10, 0]], [[0, 10], [0, 10]]]
    a = np.asarray(rasterize_strokes(stroke3, size=48))
    b = np.asarray(rasterize_strokes(absolute, size=48))
    assert np.array_equal(a, b)


def test_load_quickdraw_ndjson(tmp_path):
    path = tmp_path / "cat.ndjson"
    rows = [
        {"word": "cat", "recognized": True, "drawing": [[[0, 50, 100], [0, 80, 0]]]},
        {"word": "cat", "recognized": False, "drawing": [[[10, 20], [10, 90]]]},
        {"word": "cat", "recognized": True, "drawing": [[[0, 100], [50, 50]], [[50, 50], [0, 100]]]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_quickdraw_ndjson(path, size=32)
    assert len(items) == 3 and all(w == "cat" for _, w in items)
    assert all(img.size == (32, 32) and _ink(img) > 0 for img, _ in items)
    assert len(load_quickdraw_ndjson(path, recognized_only=True)) == 2
    assert len(load_quickdraw_ndjson(path, max_drawings=1)) == 1
    (tmp_path / "bad.ndjson").write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.ndjson:2"):
        load_quickdraw_ndjson(tmp_path / "bad.ndjson")


def test_load_quickdraw_npz(tmp_path):
    sketches = np.empty(2, dtype=object)  # ragged, as in sketch-rnn's files
    sketches[0] = np.array([[0, 0, 0], [20, 5, 0], [5, 20, 1]], dtype=np.int16)
    sketches[1] = np.array([[0, 0, 0], [0, 30, 1], [10, 0, 0], [0, -30, 1]], dtype=np.int16)
    path = tmp_path / "ladder.npz"
    np.savez(path, train=sketches, valid=sketches[:1], test=sketches[:1])
    with pytest.raises(ValueError, match="allow_pickle"):
        load_quickdraw_npz(path)
    items = load_quickdraw_npz(path, allow_pickle=True, size=40)
    assert [w for _, w in items] == ["ladder", "ladder"]
    assert items[0][0].size == (40, 40) and _ink(items[1][0]) > 0
    assert len(load_quickdraw_npz(path, split="valid", allow_pickle=True)) == 1
    with pytest.raises(KeyError, match="nope"):
        load_quickdraw_npz(path, split="nope", allow_pickle=True)
