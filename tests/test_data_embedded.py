"""The embedded synthetic default set: determinism, counts, split, cache."""

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from hf_sbir.data import EMBEDDED_CLASSES, load_embedded_default, load_sbir_dataset, load_split, render_embedded_image
from hf_sbir.data.embedded import IMAGES_PER_CLASS, embedded_default_dir


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    # One full generation for the module (~5 s), in a private cache.
    root = tmp_path_factory.mktemp("hf_sbir_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_SBIR_CACHE", str(root))
    yield root
    mp.undo()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_at_least_12_classes():
    assert len(EMBEDDED_CLASSES) >= 12 and list(EMBEDDED_CLASSES) == sorted(EMBEDDED_CLASSES)


@pytest.mark.parametrize("domain", ["sketch", "photo"])
def test_render_is_deterministic_and_seed_dependent(domain):
    for cls in ("house", "umbrella"):
        a = render_embedded_image(cls, domain, 3, seed=0)
        b = render_embedded_image(cls, domain, 3, seed=0)
        assert _png_bytes(a) == _png_bytes(b)
        assert _png_bytes(a) != _png_bytes(render_embedded_image(cls, domain, 3, seed=1))
        assert _png_bytes(a) != _png_bytes(render_embedded_image(cls, domain, 4, seed=0))
        assert a.size == (128, 128)
    with pytest.raises(ValueError, match="Unknown embedded class"):
        render_embedded_image("dragon", domain, 0)


def test_sketches_are_dark_on_white_and_photos_coloured():
    sketch = np.asarray(render_embedded_image("car", "sketch", 0))
    assert sketch.ndim == 2 and np.median(sketch) == 255 and sketch.min() < 80
    photo = np.asarray(render_embedded_image("car", "photo", 0))
    assert photo.shape == (128, 128, 3) and photo.std() > 10


def test_load_default_counts_and_split(cache):
    ds = load_embedded_default()
    split = load_split("embedded")
    names = ds["train"].features["label"].names
    assert names == list(EMBEDDED_CLASSES)
    for part, classes in (("train", split.train_classes), ("test", split.test_classes)):
        counts = Counter((names[label], dom) for label, dom in zip(ds[part]["label"], ds[part]["domain"]))
        assert set(c for c, _ in counts) == set(classes)
        assert all(n == IMAGES_PER_CLASS for n in counts.values()) and len(counts) == 2 * len(classes)
    assert len(split.test_classes) == 4 and len(split.train_classes) == len(EMBEDDED_CLASSES) - 4
    assert ds["test"][0]["id"].startswith(("sketch/", "photo/"))
    assert (cache / "embedded-v1" / "manifest.json").is_file()


def test_cached_files_are_the_rendered_images(cache):
    folder = embedded_default_dir()
    path = folder / "photo" / "key" / "key_07.png"
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(render_embedded_image("key", "photo", 7)))


def test_gzs_and_all_split_and_dispatch(cache):
    ds = load_embedded_default(gzs=True)
    split = load_split("embedded")
    names = ds["test"].features["label"].names
    held = Counter(
        names[lab]
        for lab, dom in zip(ds["test"]["label"], ds["test"]["domain"])
        if dom == "photo" and names[lab] in split.train_classes
    )
    assert set(held) == set(split.train_classes) and set(held.values()) == {6}  # 20% of 30
    queries = {names[lab] for lab, dom in zip(ds["test"]["label"], ds["test"]["domain"]) if dom == "sketch"}
    assert queries == set(split.test_classes)
    assert load_sbir_dataset("embedded")["all"].num_rows == 2 * IMAGES_PER_CLASS * len(EMBEDDED_CLASSES)


def test_regenerates_missing_files(cache):
    folder = embedded_default_dir()
    victim = folder / "sketch" / "star" / "star_00.png"
    original = victim.read_bytes()
    victim.unlink()
    assert embedded_default_dir() == folder
    assert victim.read_bytes() == original  # byte-identical regeneration
