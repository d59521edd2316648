"""Core of the sketch-search Space: load a model, index a photo gallery once, search it with a sketch.

Importable without gradio (the UI lives in ``app.py``)::

    model, transform = load_model("outputs/quickstart/model")
    index = load_or_build_gallery(model, transform, "outputs/quickstart/model", "embedded")
    searcher = SketchSearch(model, transform, index)
    for image, label, score in searcher.search(sketch_pil, k=10):
        ...
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import hf_sbir  # noqa: F401  (registers the Auto classes)
from hf_sbir.data.processing import ink_bbox, to_grayscale_ink
from hf_sbir.retrieval import ANN_MIN_GALLERY, GalleryIndex, collect_items, embed_images

DEFAULT_MODEL = "outputs/quickstart/model"
TRAIN_HINT = "python train.py --config configs/quickstart.yaml"
MAX_PIXELS = 20_000_000  # larger uploads are downscaled to this many pixels
REFUSE_PIXELS = 200_000_000  # above this an upload is refused without decoding it
MAX_K = 50
REPO_ROOT = Path(__file__).resolve().parents[2]

Progress = Callable[[float, str], None]


class SketchSearchError(ValueError):
    """A problem with the user's input or setup; the message is meant to be shown as is."""


# ------------------------------------------------------------------------------------- model
def resolve_model_path(path: str | os.PathLike | None = None) -> Path | str:
    """The model folder to load: ``path``, else ``$SKETCH_SEARCH_MODEL``, else ``outputs/quickstart/model``
    (relative to the current directory, then to the repository root)."""
    path = path or os.environ.get("SKETCH_SEARCH_MODEL") or DEFAULT_MODEL
    candidates = [Path(path).expanduser()]
    if not Path(path).is_absolute():
        candidates.append(REPO_ROOT / path)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    text = os.fspath(path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists() and text != DEFAULT_MODEL:
        return text  # a Hub id
    raise SketchSearchError(
        f"No model folder at {os.fspath(path)!r}. Train the quickstart model first (it writes "
        f"{DEFAULT_MODEL}): `{TRAIN_HINT}`, or pass --model with a saved model folder or Hub id."
    )


def load_model(path: str | os.PathLike | None = None):
    """``(model, transform)`` from a saved hf-sbir model folder (or Hub id); the model is in eval mode."""
    from transformers import AutoModel

    from hf_sbir.data import SbirImageTransform

    resolved = resolve_model_path(path)
    try:
        model = AutoModel.from_pretrained(os.fspath(resolved)).eval()
    except (OSError, ValueError) as error:
        raise SketchSearchError(
            f"Could not load a model from {os.fspath(resolved)!r}: {error}. Train one with `{TRAIN_HINT}`."
        ) from error
    if isinstance(resolved, Path):
        try:
            transform = SbirImageTransform.from_pretrained(resolved)
        except FileNotFoundError as error:
            raise SketchSearchError(f"{resolved} has no sbir_image_transform.json ({error}); re-export it with train.py") from error
    else:
        from huggingface_hub import hf_hub_download

        transform = SbirImageTransform.from_pretrained(hf_hub_download(resolved, "sbir_image_transform.json"))
    model.name_or_path = os.fspath(resolved)
    return model, transform


# ----------------------------------------------------------------------------------- gallery
def _dataset_photo_items(split_dataset, cache_dir: Path) -> tuple[list[str], list[dict]]:
    """Paths + metadata of the photo rows of one `datasets.Dataset` split."""
    import datasets

    ds = split_dataset
    if "domain" in ds.column_names:
        ds = ds.filter(lambda d: d == "photo", input_columns="domain")
    _, metadata = collect_items(ds)
    raw = ds.cast_column("image", datasets.Image(decode=False))["image"] if len(ds) else []
    paths = []
    for i, item in enumerate(raw):
        path = item.get("path") if isinstance(item, dict) else None
        if not path or not os.path.isfile(path):
            if not (isinstance(item, dict) and item.get("bytes")):
                raise SketchSearchError(f"gallery row {i} has neither a readable file nor image bytes")
            digest = hashlib.sha1(item["bytes"]).hexdigest()[:16]
            path = cache_dir / "images" / f"{digest}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(item["bytes"])
            path = str(path)
        paths.append(str(Path(path).resolve()))
    for meta, path in zip(metadata, paths):
        meta["path"] = path
        meta.setdefault("id", path)
    return paths, metadata


def gallery_items(gallery: str | os.PathLike, cache_dir: Path) -> tuple[list[str], list[dict]]:
    """Resolve a ``--gallery`` spec into ``(paths, metadata)`` (metadata: ``id``, ``path``, ``label``).

    * ``"embedded"``: the photos of every split of the package's generated default dataset;
    * a folder: its images (a ``photo/`` sub-folder is used when present; label = class sub-folder);
    * a folder written by ``datasets.save_to_disk``: its photo rows (all splits);
    * ``NAME[:SPLIT]``: ``hf_sbir.data.load_sbir_dataset(NAME)`` photos of one split (all by default).
    """
    spec = os.fspath(gallery)
    path = Path(spec).expanduser()
    if spec != "embedded" and path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            import datasets

            loaded = datasets.load_from_disk(str(path))
            splits = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
        else:
            root = path / "photo" if (path / "photo").is_dir() else path
            try:
                return collect_items(root)
            except ValueError as error:
                raise SketchSearchError(str(error)) from error
    else:
        from hf_sbir.data import load_sbir_dataset

        name, _, split = spec.partition(":")
        try:
            loaded = load_sbir_dataset(name, split="embedded") if name == "embedded" else load_sbir_dataset(name)
        except FileNotFoundError as error:
            raise SketchSearchError(f"Unknown gallery {spec!r}: {error}") from error
        if split:
            if split not in loaded:
                raise SketchSearchError(f"gallery {name!r} has no split {split!r} (splits: {list(loaded)})")
            splits = [loaded[split]]
        else:
            splits = list(loaded.values())
    paths, metadata, seen = [], [], set()
    for ds in splits:
        p, m = _dataset_photo_items(ds, cache_dir)
        for path, meta in zip(p, m):
            if path not in seen:
                seen.add(path)
                paths.append(path)
                metadata.append(meta)
    if not paths:
        raise SketchSearchError(f"gallery {spec!r} has no photos")
    return paths, metadata


def _model_fingerprint(model_dir: str | os.PathLike) -> str:
    parts = [os.fspath(model_dir)]
    if Path(model_dir).is_dir():
        for name in sorted(os.listdir(model_dir)):
            if name.endswith((".safetensors", ".json", ".bin")):
                stat = (Path(model_dir) / name).stat()
                parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def cache_root() -> Path:
    """hf-sbir's cache folder: ``$HF_SBIR_CACHE``, else ``~/.cache/hf_sbir`` (the embedded data lives there too)."""
    return Path(os.environ.get("HF_SBIR_CACHE") or Path.home() / ".cache" / "hf_sbir").expanduser()


def gallery_cache_dir(model_dir: str | os.PathLike, gallery: str | os.PathLike) -> Path:
    """Where the index for (model, gallery) is cached: ``<cache_root()>/space_galleries/<key>``.

    Never inside the model folder: a downloaded or shared model folder may be read-only, and a model
    folder is something users upload (a cache inside it would travel with it)."""
    spec = os.fspath(gallery)
    if spec != "embedded" and Path(spec).expanduser().exists():
        spec = str(Path(spec).expanduser().resolve())
    key = hashlib.sha1(f"{_model_fingerprint(model_dir)}||{spec}".encode()).hexdigest()[:16]
    return cache_root() / "space_galleries" / key


def build_index(
    model, transform, paths: list[str], metadata: list[dict], progress: Progress | None = None, batch_size: int = 32
) -> GalleryIndex:
    """Embed ``paths`` (photos) in batches, reporting ``progress(fraction, text)`` after each batch."""
    chunks = []
    for start in range(0, len(paths), batch_size):
        if progress is not None:
            progress(start / len(paths), f"indexing gallery photos {start}/{len(paths)}")
        chunks.append(embed_images(model, paths[start : start + batch_size], transform, "photo", batch_size, progress=False))
    if progress is not None:
        progress(1.0, f"indexed {len(paths)} photos")
    return GalleryIndex(torch.cat(chunks), metadata, getattr(model, "name_or_path", None), normalize=False)


def load_or_build_gallery(
    model, transform, model_dir: str | os.PathLike, gallery: str | os.PathLike = "embedded", progress: Progress | None = None
) -> GalleryIndex:
    """The cached `GalleryIndex` of (model, gallery), built (and saved) on first use."""
    cache = gallery_cache_dir(model_dir, gallery)
    if (cache / "index.json").is_file():
        try:
            index = GalleryIndex.load(cache)
            if all(Path(p).is_file() for p in index.column("path") if p):
                return index
        except (OSError, ValueError):
            pass  # stale or corrupt cache: rebuild
    paths, metadata = gallery_items(gallery, cache)
    index = build_index(model, transform, paths, metadata, progress)
    if len(index) >= ANN_MIN_GALLERY:  # search by the approximate index, built once and cached with the gallery
        if progress is not None:
            progress(1.0, f"building the approximate index over {len(index)} photos")
        index.build_ann()
    index.save(cache)
    (cache / "gallery.json").write_text(json.dumps({"gallery": os.fspath(gallery), "model": os.fspath(model_dir)}))
    return index


# -------------------------------------------------------------------------------------- input
def open_upload(path: str | os.PathLike) -> Image.Image:
    """Open an uploaded file as an image: refuses non-images and > 200 MP, downscales > 20 MP."""
    # PIL's decompression-bomb limit stays in force for the whole process (the gallery loaders rely on it):
    # this upload alone may exceed its warning threshold, up to PIL's hard limit (2x MAX_IMAGE_PIXELS).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError:
        raise SketchSearchError(
            f"{Path(path).name} is too large to decode safely (over {2 * Image.MAX_IMAGE_PIXELS // 1_000_000} MP); "
            "upload a smaller image."
        ) from None
    except Exception as error:
        raise SketchSearchError(
            f"{Path(path).name} is not an image file PIL can read ({type(error).__name__}); upload a PNG or JPEG sketch."
        ) from None
    w, h = img.size
    if w * h > REFUSE_PIXELS:
        raise SketchSearchError(f"{Path(path).name} is {w}x{h} ({w * h / 1e6:.0f} MP); images over {REFUSE_PIXELS // 1_000_000} MP are refused.")
    if w * h > MAX_PIXELS:
        scale = (MAX_PIXELS / (w * h)) ** 0.5
        try:
            img.draft("L", (int(w * scale), int(h * scale)))  # JPEG: decode at reduced size
        except Exception:
            pass
        try:
            img.thumbnail((max(1, int(w * scale)), max(1, int(h * scale))))
        except Exception as error:
            raise SketchSearchError(f"could not decode {Path(path).name}: {error}") from None
        img.info["downscaled_from"] = (w, h)
        return img
    try:
        img.load()
    except Exception as error:
        raise SketchSearchError(f"could not decode {Path(path).name} ({type(error).__name__}: {error}); is it a complete image?") from None
    return img


def sketch_from_editor(value: Any) -> Image.Image | None:
    """The drawing of a ``gr.Sketchpad``/``gr.ImageEditor`` value (dict with background/layers/composite)."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        composite = value.get("composite")
        if composite is not None:
            return composite if isinstance(composite, Image.Image) else Image.fromarray(composite)
        layers = [l if isinstance(l, Image.Image) else Image.fromarray(l) for l in value.get("layers") or [] if l is not None]
        background = value.get("background")
        if background is not None and not isinstance(background, Image.Image):
            background = Image.fromarray(background)
        base = background or (layers[0] if layers else None)
        if base is None:
            return None
        out = Image.new("RGBA", base.size, (255, 255, 255, 0))
        for layer in ([background] if background is not None else []) + layers:
            out.alpha_composite(layer.convert("RGBA").resize(base.size))
        return out
    return Image.fromarray(value)


def markdown_text(value: Any) -> str:
    """`value` as literal text inside Markdown: gallery metadata (a class name) is data, never markup, so
    `<script>` or `[x](javascript:...)` from a hostile index is shown as typed, not rendered."""
    import html
    import re

    return re.sub(r"([\\`*_\[\]()|~])", r"\\\1", html.escape(str(value), quote=False))


DISPLAY_SIZE = 512  # longest side of a result image as the UI shows it


def display_image(image: str | os.PathLike | Image.Image, size: int = DISPLAY_SIZE) -> Image.Image:
    """A result as an RGB PIL image of at most ``size`` pixels a side (a gallery photo can be any size)."""
    img = Image.open(image) if not isinstance(image, Image.Image) else image
    img = img.convert("RGB")
    img.thumbnail((size, size))
    return img


def is_blank(image: Image.Image | None) -> bool:
    return image is None or ink_bbox(to_grayscale_ink(image)) is None


# ------------------------------------------------------------------------------------- search
class SketchSearch:
    """Search a gallery with a sketch.

    Args:
        model: ``model(pixel_values=...).embeddings`` -> (B, D) L2-normalised.
        transform: ``transform(image, "sketch") -> (3, H, W)`` (an `SbirImageTransform`).
        index: a `GalleryIndex`, or a callable ``(progress) -> GalleryIndex`` built on first search.
    """

    def __init__(self, model, transform, index: GalleryIndex | Callable[..., GalleryIndex]):
        self.model = model.eval()
        self.transform = transform
        self._index = index if isinstance(index, GalleryIndex) else None
        self._factory = None if isinstance(index, GalleryIndex) else index
        self._lock = threading.Lock()

    def index(self, progress: Progress | None = None) -> GalleryIndex:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = self._factory(progress)
        return self._index

    @torch.no_grad()
    def embed_sketch(self, sketch_image: Image.Image) -> torch.Tensor:
        pixel_values = self.transform(sketch_image, "sketch")[None]
        return self.model(pixel_values=pixel_values).embeddings

    def search(self, sketch_image, k: int = 10, progress: Progress | None = None) -> list[tuple[Any, str, float]]:
        """Top-``k`` photos for ``sketch_image`` (PIL image, path or Sketchpad value), best first:
        ``[(path or PIL image, class name, cosine score)]``.

        Raises:
            SketchSearchError: empty sketch, unreadable file or bad ``k`` (message for the user).
        """
        if isinstance(sketch_image, (str, os.PathLike)):
            sketch_image = open_upload(sketch_image)
        elif isinstance(sketch_image, dict):
            sketch_image = sketch_from_editor(sketch_image)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise SketchSearchError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
        if is_blank(sketch_image):
            raise SketchSearchError("The sketch is empty: draw something (dark strokes on white) or upload a sketch.")
        w, h = sketch_image.size
        if w * h > MAX_PIXELS:
            sketch_image = sketch_image.copy()
            scale = (MAX_PIXELS / (w * h)) ** 0.5
            sketch_image.thumbnail((max(1, int(w * scale)), max(1, int(h * scale))))
        index = self.index(progress)
        scores, indices = index.search(self.embed_sketch(sketch_image), k=k)
        results = []
        for hit in index.results(indices, scores)[0]:
            image = hit.get("path") or hit.get("image")
            results.append((image, str(hit.get("label") if hit.get("label") is not None else "?"), hit["score"]))
        return results
