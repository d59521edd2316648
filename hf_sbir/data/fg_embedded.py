"""The embedded fine-grained set: sketch/photo *instance* pairs drawn by the embedded generator, so that
fine-grained SBIR (`method: fg_sbir`, `dataset: embedded`) trains and evaluates offline.

Like the category-level embedded set (`hf_sbir.data.embedded`) it is generated, not shipped, and is
**not** a benchmark. Each photo is one object instance: its own random parts (the class's shape drawn
from the instance's seed: proportions, number of sails, teeth, rays ...), pose, colours and background.
Its sketches are drawn from the same parts and pose, each with its own small pose jitter (rotation
+-6 deg, scale +-7%, shift +-3%), wobbly strokes and dropped details, as a person would sketch the photo
in front of them. Instances of one class differ only in shape details and pose, which is what makes the
task fine-grained; the class alone ranks the right photo among `test_photos_per_class` candidates.

Layout: QMUL-Shoe-V2 style, `trainA`/`testA` (sketches `<class>_<NNN>_<k>.png`) and `trainB`/`testB`
(photos `<class>_<NNN>.png`), read back with `load_fg_paired`. Defaults: the 16 embedded classes, 8
training and 4 test instances per class, 2 sketches per photo: 128 training photos / 256 sketches,
64 test photos (the gallery) / 128 test sketches (the queries), 128 x 128 px. Cached under
`$HF_SBIR_CACHE/fg-embedded-<version>` (default `~/.cache/hf_sbir`); every image is a pure function of
(seed, class, instance, sketch index), so the cache can always be regenerated identically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from datasets import DatasetDict

from hf_sbir.data.embedded import EMBEDDED_CLASSES, IMAGE_SIZE, _cache_root, object_instance, render_photo, render_sketch

FG_EMBEDDED_VERSION = "v1"
_DEFAULTS = dict(seed=0, train_photos_per_class=8, test_photos_per_class=4, sketches_per_photo=2, size=IMAGE_SIZE)


def _jittered(pose, rng: np.random.Generator, size: int):
    """The instance's pose followed by a small similarity transform about the canvas centre (the sketcher's
    own placement of the object)."""
    to_px, scale = pose
    angle = np.deg2rad(rng.uniform(-6, 6))
    factor = rng.uniform(0.93, 1.07)
    big = size * 2  # the generator's 2x drawing canvas
    shift = rng.uniform(-0.03, 0.03, 2) * big
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, s], [-s, c]]) * factor
    centre = big / 2
    return (lambda pts: (to_px(pts) - centre) @ m + centre + shift), scale * factor


def render_fg_instance(class_name: str, instance: int, num_sketches: int, seed: int = 0, size: int = IMAGE_SIZE):
    """`(photo, [sketches])` of instance `instance` of `class_name`; a pure function of its arguments."""
    key = [seed, EMBEDDED_CLASSES.index(class_name), instance]
    shape = object_instance(class_name, np.random.default_rng(key + [0]), size)
    photo = render_photo(class_name, np.random.default_rng(key + [1]), size, instance=shape)
    sketches = []
    for k in range(num_sketches):
        rng = np.random.default_rng(key + [2, k])
        sketches.append(render_sketch(class_name, rng, size, instance=(shape[0], _jittered(shape[1], rng, size))))
    return photo, sketches


def _manifest(classes, **settings) -> dict:
    return {"version": FG_EMBEDDED_VERSION, "classes": list(classes), **settings}


def generate_fg_embedded(
    output_dir: Union[str, os.PathLike],
    classes: Optional[Sequence[str]] = None,
    seed: int = 0,
    train_photos_per_class: int = 8,
    test_photos_per_class: int = 4,
    sketches_per_photo: int = 2,
    size: int = IMAGE_SIZE,
) -> Path:
    """Write the set into `output_dir` (QMUL layout, see the module docstring) plus `manifest.json`."""
    classes = list(classes or EMBEDDED_CLASSES)
    unknown = [c for c in classes if c not in EMBEDDED_CLASSES]
    if unknown:
        raise ValueError(f"Unknown embedded classes {unknown}; classes: {', '.join(EMBEDDED_CLASSES)}")
    if min(train_photos_per_class, test_photos_per_class, sketches_per_photo) < 1:
        raise ValueError("train_photos_per_class, test_photos_per_class and sketches_per_photo must be >= 1.")
    out = Path(output_dir)
    for name in ("trainA", "trainB", "testA", "testB"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for class_name in classes:
        for instance in range(train_photos_per_class + test_photos_per_class):
            split = "train" if instance < train_photos_per_class else "test"
            photo, sketches = render_fg_instance(class_name, instance, sketches_per_photo, seed, size)
            stem = f"{class_name}_{instance:03d}"
            photo.save(out / f"{split}B" / f"{stem}.png", compress_level=3)
            for k, sketch in enumerate(sketches, start=1):
                sketch.save(out / f"{split}A" / f"{stem}_{k}.png", compress_level=3)
    settings = dict(seed=seed, train_photos_per_class=train_photos_per_class, test_photos_per_class=test_photos_per_class,
                    sketches_per_photo=sketches_per_photo, size=size)
    (out / "manifest.json").write_text(json.dumps(_manifest(classes, **settings), indent=2) + "\n", encoding="utf-8")
    return out


def fg_embedded_dir(classes: Optional[Sequence[str]] = None, cache_dir: Optional[Union[str, os.PathLike]] = None, **settings) -> Path:
    """Folder of the cached set, generated (into a temporary folder, then renamed) when missing or when its
    manifest does not match the settings. Non-default settings get their own folder."""
    settings = {**_DEFAULTS, **settings}
    classes = list(classes or EMBEDDED_CLASSES)
    manifest = _manifest(classes, **settings)
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    name = f"fg-embedded-{FG_EMBEDDED_VERSION}"
    if manifest != _manifest(EMBEDDED_CLASSES, **_DEFAULTS):
        import hashlib

        name += "-" + hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:10]
    folder = root / name
    try:
        if json.loads((folder / "manifest.json").read_text(encoding="utf-8")) == manifest:
            return folder
    except (OSError, json.JSONDecodeError):
        pass
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        generate_fg_embedded(tmp, classes, **settings)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process renamed its copy into place first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_fg_embedded(classes: Optional[Sequence[str]] = None, cache_dir: Optional[Union[str, os.PathLike]] = None, **settings) -> DatasetDict:
    """The embedded fine-grained set as `load_fg_paired` returns it (`train`, `test`; columns `image`,
    `domain`, `pair_id`, `id`), generated and cached on first use. `settings`: `seed`,
    `train_photos_per_class`, `test_photos_per_class`, `sketches_per_photo`, `size`."""
    from hf_sbir.data.fg_paired import load_fg_paired

    return load_fg_paired(fg_embedded_dir(classes, cache_dir, **settings), dataset_name="fg-embedded", verify=False)


__all__ = ["FG_EMBEDDED_VERSION", "fg_embedded_dir", "generate_fg_embedded", "load_fg_embedded", "render_fg_instance"]
